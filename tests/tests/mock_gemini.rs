//! The Gemini mock over loopback: generateContent, streamGenerateContent as
//! SSE and as a streamed JSON array, key in header or query, function calls,
//! finish reasons, the prompt block inside a 200, and Google's error bodies.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_tests::mock::client::{self, ExampleRequest};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
    token_count,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start() -> MockHandle {
    MockProvider::start(ProviderKind::Gemini, MockConfig::default())
        .await
        .expect("mock starts")
}

const KEY: (&str, &str) = ("x-goog-api-key", "mock-key");

fn body() -> Value {
    json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
           "contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
}

async fn call(
    mock: &MockHandle,
    suffix: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> client::Response {
    client::post_json(
        &format!("{}/v1beta/models/gemini-2.0-flash{suffix}", mock.url()),
        headers,
        body,
    )
    .await
    .expect("response")
}

#[tokio::test]
async fn generate_content() {
    bounded(async {
        let mock = start().await;
        let r = call(&mock, ":generateContent", &[KEY], &body()).await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        let cand = &v["candidates"][0];
        assert_eq!(cand["finishReason"], "STOP");
        assert_eq!(cand["content"]["role"], "model");
        let text = cand["content"]["parts"][0]["text"].as_str().expect("text");
        assert_eq!(
            text,
            "Mock reply from gemini-2.0-flash: the last user message had 5 characters."
        );
        let u = &v["usageMetadata"];
        assert_eq!(u["promptTokenCount"], 4);
        assert_eq!(u["candidatesTokenCount"], token_count(text));
        assert_eq!(u["totalTokenCount"], 4 + token_count(text));
        assert_eq!(v["modelVersion"], "gemini-2.0-flash");

        // The key may come in the query instead.
        let r = call(&mock, ":generateContent?key=mock-key", &[], &body()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(mock.requests()[1].query.as_deref(), Some("key=mock-key"));
    })
    .await;
}

#[tokio::test]
async fn stream_as_sse() {
    bounded(async {
        let mock = start().await;
        let r = call(&mock, ":streamGenerateContent?alt=sse", &[KEY], &body()).await;
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(
            r.text().contains("\r\n\r\n"),
            "Gemini separates events with CRLF"
        );
        let evs = client::sse_events(&r.text());
        let chunks: Vec<Value> = evs.iter().map(|e| e.json()).collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
            .collect();
        assert_eq!(
            text,
            "Mock reply from gemini-2.0-flash: the last user message had 5 characters."
        );
        let last = chunks.last().expect("chunks");
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            last["usageMetadata"]["candidatesTokenCount"],
            token_count(&text)
        );
        assert!(chunks[0]["candidates"][0].get("finishReason").is_none());
        assert_eq!(chunks[0]["usageMetadata"]["promptTokenCount"], 4);
        let counts: Vec<u64> = chunks
            .iter()
            .map(|c| {
                c["usageMetadata"]["candidatesTokenCount"]
                    .as_u64()
                    .expect("count")
            })
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["responseId"] == chunks[0]["responseId"])
        );
    })
    .await;
}

#[tokio::test]
async fn stream_as_json_array() {
    bounded(async {
        let mock = start().await;
        let r = call(&mock, ":streamGenerateContent", &[KEY], &body()).await;
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        let v: Vec<Value> = serde_json::from_slice(&r.body).expect("a JSON array");
        assert!(v.len() > 5);
        assert_eq!(
            v.last().expect("last")["candidates"][0]["finishReason"],
            "STOP"
        );
    })
    .await;
}

#[tokio::test]
async fn function_call_and_finish_reasons() {
    bounded(async {
        let mock = start().await;
        let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]);
        let b = json!({"contents": [{"role": "user", "parts": [{"text": "weather?"}]}], "tools": tools});
        let v = call(&mock, ":generateContent", &[KEY], &b).await.json();
        let part = &v["candidates"][0]["content"]["parts"][0];
        assert_eq!(part["functionCall"]["name"], "get_weather");
        assert_eq!(part["functionCall"]["args"], json!({"last_user_chars": 8}));

        let b = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                       "generationConfig": {"maxOutputTokens": 2}});
        let v = call(&mock, ":generateContent", &[KEY], &b).await.json();
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 2);

        mock.enqueue(1, Fault::Refusal);
        let v = call(&mock, ":generateContent", &[KEY], &body()).await.json();
        let cand = &v["candidates"][0];
        assert_eq!(cand["finishReason"], "SAFETY");
        assert!(cand.get("content").is_none());
        assert!(cand["safetyRatings"].as_array().expect("ratings").iter().any(|r| r["blocked"] == true));

        mock.enqueue(1, Behaviour::error(ErrorKind::ContentFilter));
        let r = call(&mock, ":generateContent", &[KEY], &body()).await;
        assert_eq!(r.status, StatusCode::OK, "Gemini blocks a prompt inside a 200");
        let v = r.json();
        assert_eq!(v["promptFeedback"]["blockReason"], "SAFETY");
        assert!(v.get("candidates").is_none());
    })
    .await;
}

#[tokio::test]
async fn auth_errors() {
    bounded(async {
        let mock = start().await;
        let r = call(&mock, ":generateContent", &[], &body()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
        let r = call(
            &mock,
            ":generateContent",
            &[("x-goog-api-key", "AIza-wrong")],
            &body(),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let e = &r.json()["error"];
        assert_eq!(e["code"], 400);
        assert_eq!(e["status"], "INVALID_ARGUMENT");
        assert_eq!(
            e["message"],
            "API key not valid. Please pass a valid API key."
        );
        assert_eq!(e["details"][0]["reason"], "API_KEY_INVALID");
        assert_eq!(
            e["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
    })
    .await;
}

#[tokio::test]
async fn every_error_kind_has_its_status() {
    bounded(async {
        let mock = start().await;
        let cases = [
            (ErrorKind::BadRequest, 400, "INVALID_ARGUMENT"),
            (ErrorKind::Auth, 400, "INVALID_ARGUMENT"),
            (ErrorKind::PermissionDenied, 403, "PERMISSION_DENIED"),
            (ErrorKind::NotFound, 404, "NOT_FOUND"),
            (ErrorKind::ContextLength, 400, "INVALID_ARGUMENT"),
            (ErrorKind::RequestTooLarge, 400, "INVALID_ARGUMENT"),
            (
                ErrorKind::RateLimited(RateLimit::default()),
                429,
                "RESOURCE_EXHAUSTED",
            ),
            (ErrorKind::QuotaExhausted, 429, "RESOURCE_EXHAUSTED"),
            (ErrorKind::ServerError, 500, "INTERNAL"),
            (ErrorKind::Overloaded, 503, "UNAVAILABLE"),
            (ErrorKind::ModelNotReady, 503, "UNAVAILABLE"),
            (ErrorKind::Timeout, 504, "DEADLINE_EXCEEDED"),
        ];
        let req = ExampleRequest::chat(ProviderKind::Gemini, &mock.url(), "gemini-x", "hi", false);
        for (kind, status, code) in cases {
            mock.enqueue(1, Behaviour::error(kind.clone()));
            let r = req.send().await.expect("r");
            assert_eq!(r.status.as_u16(), status, "{kind:?}");
            let e = &r.json()["error"];
            assert_eq!(e["code"], status, "{kind:?}");
            assert_eq!(e["status"], code, "{kind:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn rate_limit_carries_retry_info() {
    bounded(async {
        let mock = start().await;
        let req = ExampleRequest::chat(ProviderKind::Gemini, &mock.url(), "gemini-x", "hi", false);
        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
                Duration::from_secs(58),
            ))),
        );
        let e = req.send().await.expect("r").json()["error"].clone();
        let details = e["details"].as_array().expect("details");
        let retry = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
            .expect("RetryInfo");
        assert_eq!(retry["retryDelay"], "58s");
        let quota = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure")
            .expect("QuotaFailure");
        assert_eq!(
            quota["violations"][0]["quotaId"],
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        );

        mock.enqueue(1, Behaviour::error(ErrorKind::QuotaExhausted));
        let e = req.send().await.expect("r").json()["error"].clone();
        let details = e["details"].as_array().expect("details");
        assert!(
            details
                .iter()
                .all(|d| d["@type"] != "type.googleapis.com/google.rpc.RetryInfo")
        );
        assert!(details.iter().any(|d| d["violations"][0]["quotaId"]
            == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"));
    })
    .await;
}

#[tokio::test]
async fn mid_stream_error_event() {
    bounded(async {
        let mock = start().await;
        mock.enqueue(
            1,
            Fault::MidStreamError {
                after: 2,
                kind: ErrorKind::Overloaded,
            },
        );
        let r = call(&mock, ":streamGenerateContent?alt=sse", &[KEY], &body()).await;
        let evs = client::sse_events(&r.text());
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[2].json()["error"]["status"], "UNAVAILABLE");
    })
    .await;
}

#[tokio::test]
async fn embeddings_single_and_batch() {
    bounded(async {
        let mock = start().await;
        let one = json!({"content": {"parts": [{"text": "abcd"}]}, "outputDimensionality": 4});
        let v = client::post_json(
            &format!(
                "{}/v1beta/models/text-embedding-004:embedContent",
                mock.url()
            ),
            &[KEY],
            &one,
        )
        .await
        .expect("r")
        .json();
        let values = v["embedding"]["values"].as_array().expect("values");
        assert_eq!(values.len(), 4);
        let batch = json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "bb"}]}},
        ]});
        let v = client::post_json(
            &format!(
                "{}/v1beta/models/text-embedding-004:batchEmbedContents",
                mock.url()
            ),
            &[KEY],
            &batch,
        )
        .await
        .expect("r")
        .json();
        assert_eq!(v["embeddings"].as_array().expect("list").len(), 2);
        assert_eq!(
            v["embeddings"][0]["values"]
                .as_array()
                .expect("values")
                .len(),
            8
        );
    })
    .await;
}
