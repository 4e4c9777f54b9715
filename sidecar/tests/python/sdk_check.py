"""Drives a running sidecar with the official `openai` and `anthropic`
Python packages, exactly as an application would.

Usage: sdk_check.py BASE_URL   (e.g. http://127.0.0.1:4100)

The sidecar's route `chat` must be served by an upstream that answers tool
calls when tools are offered (the sluice-tests OpenAI mock does). Exits
non-zero with a message on the first failed check.
"""

import json
import sys

import anthropic
import openai

base = sys.argv[1].rstrip("/")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

# Non-stream.
raw = client.chat.completions.with_raw_response.create(
    model="chat", messages=[{"role": "user", "content": "Say hello"}], temperature=0
)
resp = raw.parse()
check(resp.choices[0].message.content, "openai non-stream has content")
check(resp.usage is not None and resp.usage.total_tokens > 0, "openai non-stream has usage")
check(raw.headers.get("x-sluice-route") == "chat", "x-sluice-route header")

# Stream, with usage asked for.
text = ""
saw_usage = False
stream = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "Tell me a story"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        saw_usage = True
    for choice in chunk.choices:
        text += choice.delta.content or ""
check(len(text) > 0, "openai stream has text")
check(saw_usage, "openai stream has the usage chunk")

# Tools, non-stream and stream.
resp = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[WEATHER],
)
calls = resp.choices[0].message.tool_calls
check(calls and calls[0].function.name == "get_weather", "openai tool call")
json.loads(calls[0].function.arguments)

args = ""
name = None
for chunk in client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[WEATHER],
    stream=True,
):
    for choice in chunk.choices:
        for tc in choice.delta.tool_calls or []:
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
check(name == "get_weather", "openai streamed tool call name")
json.loads(args)

# Embeddings.
emb = client.embeddings.create(model="chat", input=["one", "two"])
check(len(emb.data) == 2 and len(emb.data[0].embedding) > 0, "openai embeddings")

# Errors: unknown model is a 404 NotFoundError with our code.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model raises")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", "unknown model → model_not_found")

# Models.
ids = [m.id for m in client.models.list()]
check("chat" in ids, "models list has the route")

# Anthropic SDK against /v1/messages.
ac = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
msg = ac.messages.create(
    model="chat", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
)
check(msg.content and msg.content[0].type == "text" and msg.content[0].text, "anthropic non-stream text")
check(msg.stop_reason == "end_turn", "anthropic stop_reason")

with ac.messages.stream(
    model="chat", max_tokens=100, messages=[{"role": "user", "content": "Tell me a story"}]
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
check(len(streamed) > 0, "anthropic stream text")
check(final.usage.output_tokens > 0, "anthropic stream usage")

msg = ac.messages.create(
    model="chat",
    max_tokens=100,
    tools=[{"name": "get_weather", "description": "Weather", "input_schema": WEATHER["function"]["parameters"]}],
    messages=[{"role": "user", "content": "Weather in Paris?"}],
)
check(any(b.type == "tool_use" and b.name == "get_weather" for b in msg.content), "anthropic tool_use")

try:
    ac.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    check(False, "anthropic unknown model raises")
except anthropic.NotFoundError:
    check(True, "anthropic unknown model → NotFoundError")

print("all SDK checks passed")
