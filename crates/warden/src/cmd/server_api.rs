//! A running server's API as the CLI calls it (`warden audit --server`, `warden
//! approvals`, `warden policy`): the key from `WARDEN_KEY`, never an argument (other users can read a
//! process's arguments), and the server's one error shape turned into one line.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::time::Duration;

/// The environment variable holding the API key.
pub const KEY_ENV: &str = "WARDEN_KEY";

/// A server at `base`, with the caller's key.
pub struct ServerApi {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl ServerApi {
    /// Checks the URL and reads the key; `needs` says which key is missing
    /// (`--server needs an admin or operator key`).
    pub fn new(base: &str, needs: &str, timeout: Duration) -> Result<Self> {
        let key = std::env::var(KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty())
            .with_context(|| format!("{needs} in {KEY_ENV}"))?;
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server takes an http:// or https:// URL, got `{base}`");
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            base: base.to_owned(),
            key,
            client,
        })
    }

    /// Sends a request and decodes a 2xx answer; any other answer becomes the server's
    /// error.
    pub async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(method, &url, query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request, &url).await
    }

    /// POSTs a document as it is (a policy file's text, say) with its media type, and
    /// decodes a 2xx answer like [`ServerApi::send`].
    pub async fn post_document<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        content_type: &str,
        document: String,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let request = self
            .request(reqwest::Method::POST, &url, query)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(document);
        self.answer(request, &url).await
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .bearer_auth(&self.key)
            .query(query)
    }

    /// Sends `request` and decodes a 2xx answer; any other answer becomes the server's
    /// error, on one line.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the answer of {url}"))?;
        if !status.is_success() {
            // The server's one error shape; anything else is not a Warden server.
            if let Ok(body) = serde_json::from_slice::<Value>(&bytes)
                && let Some(code) = body["error"].as_str()
            {
                bail!(
                    "the server answered {}: {code}: {}",
                    status.as_u16(),
                    body["detail"].as_str().unwrap_or_default()
                );
            }
            bail!("the server answered {} to {url}", status.as_u16());
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the answer of {url} is not what a Warden server sends"))
    }

    /// GETs `path` and decodes a 2xx answer.
    pub async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        self.send(reqwest::Method::GET, path, query, None).await
    }
}

/// `raw` as one path segment: what is not unreserved in a URL is percent-encoded, so an id
/// or a version cannot reach another route (`../keys`, `a?b`).
pub fn path_segment(raw: &str) -> String {
    let mut encoded = String::new();
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}
