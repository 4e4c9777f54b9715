"""Conformance check: drive `mock-provider` with the providers' official SDKs.

Usage: python sdk_check.py PATH/TO/mock-provider

Needs `openai`, `anthropic`, `google-genai` and `boto3` installed. Each SDK
must parse the mocks' success bodies and streams, raise its own exception
class for each scripted error, retry where it would against the real API,
and (boto3) sign requests that the Bedrock mock verifies. Prints one line
per check and `N passed, M failed`; exits 1 on any failure. Run by
`tests/tests/mock_sdks.rs` when SLUICE_SDK_PYTHON names a Python that has
the SDKs.
"""
import atexit, json, subprocess, sys, urllib.request, time

BIN = sys.argv[1]
procs = []
# Never leave mock processes behind, whatever happens below.
atexit.register(lambda: [p.kill() for p in procs])

def start(kind, *extra):
    p = subprocess.Popen([BIN, "--kind", kind, *extra], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return p.stdout.readline().strip()

def control(addr, path, body=None, scheme="http"):
    """Call the mock's /__mock/ control API."""
    req = urllib.request.Request(f"{scheme}://{addr}/__mock/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())

def enqueue(addr, behaviour, times=1):
    control(addr, "enqueue", {"times": times, "behaviour": behaviour})

results = []
def check(name, fn):
    try:
        fn()
        results.append((name, "ok", ""))
    except Exception as e:  # noqa
        results.append((name, "FAIL", f"{type(e).__name__}: {e}"))

# ---------------- OpenAI ----------------
import openai
oa = start("openai")
client = openai.OpenAI(base_url=f"http://{oa}/v1", api_key="mock-key", max_retries=0, timeout=10)

def oa_chat():
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
    assert r.choices[0].message.content.startswith("Mock reply from gpt-4o"), r
    assert r.usage.prompt_tokens == 2 and r.choices[0].finish_reason == "stop"
check("openai chat", oa_chat)

def oa_stream():
    s = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}],
                                       stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for c in s:
        if c.choices:
            text += c.choices[0].delta.content or ""
        if c.usage:
            usage = c.usage
    assert text.startswith("Mock reply"), text
    assert usage and usage.completion_tokens > 0
check("openai stream+usage", oa_stream)

def oa_tools_stream():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=tools) as s:
        final = s.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == {"last_user_chars": 8}, tc
check("openai tools stream (SDK accumulator)", oa_tools_stream)

def oa_embed_models():
    e = client.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    assert len(e.data) == 2 and e.usage.total_tokens == 2
    assert [m.id for m in client.models.list()][0] == "gpt-4o"
check("openai embeddings+models", oa_embed_models)

def oa_errors():
    for kind, cls, code in [("rate_limited", openai.RateLimitError, "rate_limit_exceeded"),
                            ("quota_exhausted", openai.RateLimitError, "insufficient_quota"),
                            ("auth", openai.AuthenticationError, "invalid_api_key"),
                            ("not_found", openai.NotFoundError, "model_not_found"),
                            ("context_length", openai.BadRequestError, "context_length_exceeded"),
                            ("server_error", openai.InternalServerError, None),
                            ("overloaded", openai.InternalServerError, None)]:
        enqueue(oa, {"fault": {"type": "error", "kind": kind}})
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
            raise AssertionError(f"{kind}: no error")
        except cls as e:
            assert e.code == code, (kind, e.code)
            assert e.request_id and e.request_id.startswith("req_"), e.request_id
check("openai error classes/codes", oa_errors)

def oa_retry_after_ms():
    c = openai.OpenAI(base_url=f"http://{oa}/v1", api_key="mock-key", max_retries=2, timeout=10)
    before = control(oa, "requests")["count"]
    enqueue(oa, {"fault": {"type": "error", "kind": "rate_limited", "retry_after": 50}})
    t = time.time()
    r = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert control(oa, "requests")["count"] - before == 2
    assert time.time() - t >= 0.05
check("openai SDK retries on 429 honouring retry-after-ms", oa_retry_after_ms)

def oa_mid_stream():
    enqueue(oa, {"fault": {"type": "mid_stream_error", "after": 3, "kind": {"kind": "server_error"}}})
    s = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True)
    try:
        for _ in s: pass
        raise AssertionError("no error")
    except openai.APIError as e:
        assert "server had an error" in str(e), e
check("openai mid-stream error raises APIError", oa_mid_stream)

def oa_refusal():
    enqueue(oa, {"fault": {"type": "refusal"}})
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.refusal and r.choices[0].message.content is None
check("openai refusal field", oa_refusal)

# ---------------- Azure ----------------
az = start("azure")
def az_chat():
    c = openai.AzureOpenAI(azure_endpoint=f"http://{az}", api_key="mock-key", api_version="2024-10-21", max_retries=0, timeout=10)
    r = c.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "hi"}])
    assert r.model == "my-deployment"
    s = c.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices)
    assert text.startswith("Mock reply")
    enqueue(az, {"fault": {"type": "error", "kind": "content_filter"}})
    try:
        c.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error")
    except openai.BadRequestError as e:
        assert e.code == "content_filter" and e.body["innererror"]["code"] == "ResponsibleAIPolicyViolation", e.body
    bad = openai.AzureOpenAI(azure_endpoint=f"http://{az}", api_key="wrong", api_version="2024-10-21", max_retries=0, timeout=10)
    try:
        bad.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error")
    except openai.AuthenticationError:
        pass
check("azure via AzureOpenAI client", az_chat)

# ---------------- Anthropic ----------------
import anthropic
an = start("anthropic")
ac = anthropic.Anthropic(base_url=f"http://{an}", api_key="mock-key", max_retries=0, timeout=10)
def an_msg():
    m = ac.messages.create(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text.startswith("Mock reply") and m.stop_reason == "end_turn" and m.usage.input_tokens == 2
    assert m._request_id and m._request_id.startswith("req_")
check("anthropic message", an_msg)

def an_stream():
    with ac.messages.stream(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == final.content[0].text and final.usage.output_tokens > 0
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    with ac.messages.stream(model="claude-x", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "weather?"}]) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"last_user_chars": 8}, final
check("anthropic stream + tool_use accumulation", an_stream)

def an_errors():
    for kind, cls in [("rate_limited", anthropic.RateLimitError), ("auth", anthropic.AuthenticationError),
                      ("permission_denied", anthropic.PermissionDeniedError), ("not_found", anthropic.NotFoundError),
                      ("request_too_large", anthropic.APIStatusError), ("server_error", anthropic.InternalServerError),
                      ("quota_exhausted", anthropic.APIStatusError), ("timeout", anthropic.InternalServerError),
                      ("overloaded", anthropic.APIStatusError)]:
        enqueue(an, {"fault": {"type": "error", "kind": kind}})
        try:
            ac.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}])
            raise AssertionError(f"{kind}: no error")
        except cls as e:
            pass
    enqueue(an, {"fault": {"type": "error", "kind": "overloaded"}})
    try:
        ac.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    except anthropic.APIStatusError as e:
        assert e.status_code == 529 and type(e).__name__ in ("OverloadedError", "InternalServerError"), type(e)
check("anthropic error classes", an_errors)

def an_mid_stream():
    enqueue(an, {"fault": {"type": "mid_stream_error", "after": 4, "kind": {"kind": "overloaded"}}})
    try:
        with ac.messages.stream(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hello"}]) as s:
            for _ in s.text_stream: pass
        raise AssertionError("no error")
    except anthropic.APIStatusError as e:
        assert "Overloaded" in str(e), e
check("anthropic event: error raises", an_mid_stream)

def an_retry():
    c = anthropic.Anthropic(base_url=f"http://{an}", api_key="mock-key", max_retries=2, timeout=10)
    before = control(an, "requests")["count"]
    enqueue(an, {"fault": {"type": "error", "kind": "rate_limited", "retry_after": 1000}})
    c.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert control(an, "requests")["count"] - before == 2
check("anthropic SDK retries 429", an_retry)

# ---------------- Gemini ----------------
from google import genai
from google.genai import types, errors as gerrors
ge = start("gemini")
gc = genai.Client(api_key="mock-key", http_options=types.HttpOptions(base_url=f"http://{ge}", timeout=10_000))
def ge_generate():
    r = gc.models.generate_content(model="gemini-2.0-flash", contents="hello")
    assert r.text.startswith("Mock reply from gemini-2.0-flash"), r.text
    assert r.usage_metadata.prompt_token_count == 2
    text = "".join(ch.text or "" for ch in gc.models.generate_content_stream(model="gemini-2.0-flash", contents="hello"))
    assert text == r.text, text
check("gemini generate + stream (google-genai)", ge_generate)

def ge_errors():
    enqueue(ge, {"fault": {"type": "error", "kind": "rate_limited", "retry_after": 2000}})
    try:
        gc.models.generate_content(model="gemini-2.0-flash", contents="hello")
        raise AssertionError("no error")
    except gerrors.ClientError as e:
        assert e.code == 429 and e.status == "RESOURCE_EXHAUSTED", (e.code, e.status)
    enqueue(ge, {"fault": {"type": "error", "kind": "overloaded"}})
    try:
        gc.models.generate_content(model="gemini-2.0-flash", contents="hello")
        raise AssertionError("no error")
    except gerrors.ServerError as e:
        assert e.code == 503
    bad = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=f"http://{ge}", timeout=10_000))
    try:
        bad.models.generate_content(model="gemini-2.0-flash", contents="hello")
        raise AssertionError("no error")
    except gerrors.ClientError as e:
        assert e.code == 400 and "API key not valid" in e.message
check("gemini errors (google-genai)", ge_errors)

def ge_mid_stream():
    enqueue(ge, {"fault": {"type": "mid_stream_error", "after": 2, "kind": {"kind": "overloaded"}}})
    got = []
    try:
        for ch in gc.models.generate_content_stream(model="gemini-2.0-flash", contents="hello"):
            got.append(ch.text)
        raise AssertionError("no error")
    except gerrors.ServerError as e:
        assert e.code == 503 and len(got) == 2, (e.code, got)
check("gemini mid-stream error chunk raises ServerError", ge_mid_stream)

def ge_embed():
    r = gc.models.embed_content(model="text-embedding-004", contents=["a", "bb"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0].values) == 8, r
check("gemini embed_content", ge_embed)

# ---------------- Bedrock ----------------
import boto3, botocore
from botocore.config import Config
br = start("bedrock", "--api-key", "AKIDEXAMPLE", "--aws-secret-key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "--region", "us-west-2")
bc = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=f"http://{br}",
                  aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                  config=Config(retries={"total_max_attempts": 1}, read_timeout=10, connect_timeout=5))
MID = "anthropic.claude-3-haiku-20240307-v1:0"
def br_converse():
    r = bc.converse(modelId=MID, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert r["output"]["message"]["content"][0]["text"].startswith(f"Mock reply from {MID}"), r
    assert r["stopReason"] == "end_turn" and r["usage"]["inputTokens"] == 2
check("bedrock converse (boto3, signature verified)", br_converse)

def br_stream():
    r = bc.converse_stream(modelId=MID, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    kinds, text = [], ""
    for ev in r["stream"]:
        k = next(iter(ev)); kinds.append(k)
        if k == "contentBlockDelta":
            text += ev[k]["delta"]["text"]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"], kinds
    assert text.startswith("Mock reply")
check("bedrock converse_stream (boto3 event-stream parser)", br_stream)

def br_errors():
    for kind, code in [("rate_limited", "ThrottlingException"), ("quota_exhausted", "ServiceQuotaExceededException"),
                       ("model_not_ready", "ModelNotReadyException"), ("bad_request", "ValidationException"),
                       ("permission_denied", "AccessDeniedException"), ("timeout", "ModelTimeoutException"),
                       ("server_error", "InternalServerException"), ("overloaded", "ServiceUnavailableException")]:
        enqueue(br, {"fault": {"type": "error", "kind": kind}})
        try:
            bc.converse(modelId=MID, messages=[{"role": "user", "content": [{"text": "x"}]}])
            raise AssertionError(f"{kind}: no error")
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == code, (kind, e.response["Error"])
            mod = getattr(bc.exceptions, code, None)
            assert mod is not None and isinstance(e, mod), (kind, type(e))
check("bedrock error codes map to boto3 modeled exceptions", br_errors)

def br_stream_exception():
    enqueue(br, {"fault": {"type": "mid_stream_error", "after": 3, "kind": {"kind": "rate_limited"}}})
    r = bc.converse_stream(modelId=MID, messages=[{"role": "user", "content": [{"text": "hello"}]}])
    try:
        for _ in r["stream"]: pass
        raise AssertionError("no error")
    except botocore.exceptions.EventStreamError as e:
        assert e.response["Error"]["Code"] == "throttlingException", e.response
check("bedrock exception frame raises EventStreamError", br_stream_exception)

def br_bad_secret():
    bad = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=f"http://{br}",
                       aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wrong-secret",
                       config=Config(retries={"max_attempts": 1}))
    try:
        bad.converse(modelId=MID, messages=[{"role": "user", "content": [{"text": "x"}]}])
        raise AssertionError("no error")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response["Error"]
check("bedrock wrong secret -> InvalidSignatureException", br_bad_secret)

for p in procs:
    p.kill()
for name, status, detail in results:
    print(f"{status:4} {name} {detail}")
failed = sum(1 for r in results if r[1] != "ok")
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
