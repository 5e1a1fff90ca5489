"""Anthropic's Messages API on Writingmate keys: /api/anthropic/v1/messages, count_tokens and models."""
