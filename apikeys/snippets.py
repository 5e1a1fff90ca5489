"""Ready-to-paste setups for a developer key: environment, curl, SDKs and the CLIs the launch post names.

Every snippet is built from this server's origin (as the request reached it), so what a user copies
points at the server they are looking at. The key itself goes only into lines that set an environment
variable, and only on the one-time reveal; config files name the variable, never the key.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_PLACEHOLDER = "YOUR_WRITINGMATE_DEVELOPER_KEY"
KEY_VARIABLE = "WRITINGMATE_API_KEY"
OPENAI_PATH = "/api/openai/v1"
ANTHROPIC_PATH = "/api/anthropic"
# The launch post's models: google/gemini-2.5-flash is the one validated on production.
EXAMPLE_MODEL = "google/gemini-2.5-flash"
SECOND_MODEL = "openai/gpt-5-mini"
CLAUDE_MODEL = "anthropic/claude-sonnet-4.5"


@dataclass(frozen=True)
class Snippet:
    slug: str  # stable id for the page's anchors and copy buttons
    title: str
    language: str  # shell, python, javascript, json, yaml, toml
    text: str
    note: str = ""


def openai_base_url(origin: str) -> str:
    return origin.rstrip("/") + OPENAI_PATH


def setup_snippets(*, origin: str, key: str | None = None) -> tuple[Snippet, ...]:
    """The setups for `origin` ("https://host:port"); `key` only on the reveal, else a placeholder."""
    base = openai_base_url(origin)
    anthropic_base = origin.rstrip("/") + ANTHROPIC_PATH
    secret = key or KEY_PLACEHOLDER
    return (
        Snippet(
            "env",
            "Environment variables",
            "shell",
            f'export {KEY_VARIABLE}={secret}\nexport OPENAI_API_KEY="${KEY_VARIABLE}"\nexport OPENAI_BASE_URL={base}\n',
            f"Most OpenAI-compatible tools need only these. The examples below read the key from ${KEY_VARIABLE}.",
        ),
        Snippet(
            "curl",
            "curl",
            "shell",
            f"curl {base}/chat/completions \\\n"
            f'  -H "Authorization: Bearer ${KEY_VARIABLE}" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{EXAMPLE_MODEL}", "messages": [{{"role": "user", "content": "Say hello."}}]}}\'\n',
        ),
        Snippet(
            "python",
            "Python (openai SDK)",
            "python",
            "import os\n\n"
            "from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}", api_key=os.environ["{KEY_VARIABLE}"])\n'
            "completion = client.chat.completions.create(\n"
            f'    model="{EXAMPLE_MODEL}",\n'
            '    messages=[{"role": "user", "content": "Say hello from Writingmate."}],\n'
            ")\n"
            "print(completion.choices[0].message.content)\n",
            "pip install openai",
        ),
        Snippet(
            "node",
            "Node (openai SDK)",
            "javascript",
            'import OpenAI from "openai";\n\n'
            "const client = new OpenAI({\n"
            f"  apiKey: process.env.{KEY_VARIABLE},\n"
            f'  baseURL: "{base}",\n'
            "});\n\n"
            "const response = await client.responses.create({\n"
            f'  model: "{EXAMPLE_MODEL}",\n'
            '  input: "Say hello from Writingmate.",\n'
            "});\n"
            "console.log(response.output_text);\n",
            "npm install openai, save as hello.mjs and run node hello.mjs (the SDK needs Node 22 or later).",
        ),
        Snippet(
            "opencode",
            "OpenCode",
            "json",
            "{\n"
            '  "$schema": "https://opencode.ai/config.json",\n'
            '  "provider": {\n'
            '    "writingmate": {\n'
            '      "npm": "@ai-sdk/openai-compatible",\n'
            '      "name": "Writingmate",\n'
            '      "options": {\n'
            f'        "baseURL": "{base}",\n'
            '        "apiKey": "{env:OPENAI_API_KEY}"\n'
            "      },\n"
            '      "models": {\n'
            f'        "{EXAMPLE_MODEL}": {{}},\n'
            f'        "{SECOND_MODEL}": {{}}\n'
            "      }\n"
            "    }\n"
            "  }\n"
            "}\n",
            "In opencode.json; then set OPENAI_API_KEY to your key (the environment variables above do).",
        ),
        Snippet(
            "aider",
            "Aider",
            "shell",
            f"export OPENAI_API_KEY={secret}\nexport OPENAI_API_BASE={base}\n\naider --model openai/{EXAMPLE_MODEL}\n",
            f"Aider uses the openai/ prefix for OpenAI-compatible providers: {EXAMPLE_MODEL} becomes "
            f"openai/{EXAMPLE_MODEL}.",
        ),
        Snippet(
            "llm",
            "llm CLI",
            "yaml",
            "- model_id: writingmate-gemini-flash\n"
            f"  model_name: {EXAMPLE_MODEL}\n"
            f'  api_base: "{base}"\n'
            "  api_key_name: openai\n",
            "In extra-openai-models.yaml (in the directory `llm logs path` is in); store the key with "
            '`llm keys set openai`, then run `llm -m writingmate-gemini-flash "Reply with exactly: HELLO"`.',
        ),
        Snippet(
            "codex",
            "Codex CLI",
            "toml",
            f'model = "{SECOND_MODEL}"\n'
            'model_provider = "writingmate"\n\n'
            "[model_providers.writingmate]\n"
            'name = "Writingmate"\n'
            f'base_url = "{base}"\n'
            f'env_key = "{KEY_VARIABLE}"\n'
            'wire_api = "responses"\n',
            f"In ~/.codex/config.toml; Codex reads the key from ${KEY_VARIABLE}.",
        ),
        Snippet(
            "claude-code",
            "Claude Code",
            "shell",
            f"export ANTHROPIC_BASE_URL={anthropic_base}\nexport ANTHROPIC_API_KEY={secret}\n\nclaude\n",
            f"Claude Code speaks Anthropic's Messages API; its default models answer as the closest model of "
            f"your plan. Pick one with `claude --model {CLAUDE_MODEL}` (or any model of your plan). "
            "ANTHROPIC_AUTH_TOKEN works in place of ANTHROPIC_API_KEY.",
        ),
        Snippet(
            "anthropic-python",
            "Python (anthropic SDK)",
            "python",
            "import os\n\n"
            "from anthropic import Anthropic\n\n"
            f'client = Anthropic(base_url="{anthropic_base}", api_key=os.environ["{KEY_VARIABLE}"])\n'
            "message = client.messages.create(\n"
            f'    model="{CLAUDE_MODEL}",\n'
            "    max_tokens=1024,\n"
            '    messages=[{"role": "user", "content": "Say hello from Writingmate."}],\n'
            ")\n"
            "print(message.content[0].text)\n",
            "pip install anthropic. Every model of your plan works here, not only Claude.",
        ),
    )
