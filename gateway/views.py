"""Placeholder replaced below."""
async def models_list(request, **kw): raise NotImplementedError
async def models_retrieve(request, **kw): raise NotImplementedError
async def chat_completions(request, **kw): raise NotImplementedError
async def completions(request, **kw): raise NotImplementedError
async def responses(request, **kw): raise NotImplementedError
async def audio_transcriptions(request, **kw): raise NotImplementedError
