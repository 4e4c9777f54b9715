//! AWS Signature Version 4 for the Bedrock mock: verify a request's
//! signature when the mock is given the secret key, and sign requests for
//! tests. Follows the published algorithm (canonical request → string to
//! sign → HMAC-SHA256 key chain) with the non-S3 rules the SDKs use: the
//! path as sent is percent-encoded once more ("double encoding"), the query
//! is sorted, header values are trimmed and inner runs of spaces collapsed.
//! Checked against the AWS test suite's `get-vanilla` vector.

use sha2::{Digest, Sha256};

/// What a signature covers.
#[derive(Clone, Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as sent (already percent-encoded once).
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// (lower-case name, value) of every header to sign, `host` and
    /// `x-amz-date` included.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// The credential scope and time of a signature.
#[derive(Clone, Debug)]
pub struct Scope<'a> {
    pub access_key_id: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the `x-amz-date` value.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Percent-encode everything but unreserved characters (and `/` when
/// `keep_slash`), upper-case hex, as SigV4 requires.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| super::render::percent_decode(s);
            (uri_encode(&dec(k), false), uri_encode(&dec(v), false))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request and the `SignedHeaders` list it implies.
fn canonical_request(req: &SignedRequest<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let payload = hex::encode(Sha256::digest(req.body));
    let path = if req.path.is_empty() { "/" } else { req.path };
    (
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method,
            uri_encode(path, true),
            canonical_query(req.query),
            canonical_headers,
            signed,
            payload
        ),
        signed,
    )
}

/// The hex signature of `req` under `scope` with `secret`.
pub fn signature(req: &SignedRequest<'_>, scope: &Scope<'_>, secret: &str) -> String {
    let (canonical, _) = canonical_request(req);
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// The full `Authorization` header value for `req`.
pub fn authorization(req: &SignedRequest<'_>, scope: &Scope<'_>, secret: &str) -> String {
    let (_, signed) = canonical_request(req);
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{date}/{}/{}/aws4_request, SignedHeaders={signed}, Signature={}",
        scope.access_key_id,
        scope.region,
        scope.service,
        signature(req, scope, secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_test_suite_get_vanilla() {
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: None,
            headers: vec![
                ("host".into(), "example.amazonaws.com".into()),
                ("x-amz-date".into(), "20150830T123600Z".into()),
            ],
            body: b"",
        };
        let scope = Scope {
            access_key_id: "AKIDEXAMPLE",
            amz_date: "20150830T123600Z",
            region: "us-east-1",
            service: "service",
        };
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            signature(&req, &scope, secret),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(
            authorization(&req, &scope, secret),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn paths_are_encoded_twice_and_queries_sorted() {
        let req = SignedRequest {
            method: "POST",
            path: "/model/a.b-v1%3A0/converse",
            query: Some("b=2&a=1"),
            headers: vec![("host".into(), "h".into())],
            body: b"{}",
        };
        let (c, signed) = canonical_request(&req);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[1], "/model/a.b-v1%253A0/converse");
        assert_eq!(lines[2], "a=1&b=2");
        assert_eq!(signed, "host");
    }
}
