//! A small W3C WebDriver client (the JSON-over-HTTP protocol chromedriver
//! speaks) over the suite's reqwest, driving Debian's headless Chromium.
//! Written here instead of taking fantoccini or thirtyfour: the protocol
//! needs a dozen requests, and this adds no dependency tree for a 2-core
//! machine to compile. `chromedriver` and `chromium` come from apt
//! (`chromium-driver`, `chromium`; scripts/test.sh installs them).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// A chromedriver process on a free port; killed when dropped.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver and waits until it answers `/status`.
    pub(crate) async fn start() -> Driver {
        super::require_tool(
            "chromedriver",
            &["--version"],
            "apt-get install chromium chromium-driver",
        );
        let port = super::s3::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("{}/status", driver.url)).await;
            if let Ok(resp) = ready
                && let Ok(v) = resp.json_value().await
                && v["value"]["ready"] == json!(true)
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A headless Chromium session with a fixed window size (for
    /// screenshots of the same size everywhere).
    pub(crate) async fn session(&self) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }}});
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let v = call(
            &client,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(caps),
        )
        .await
        .expect("new WebDriver session");
        let id = v["sessionId"].as_str().expect("sessionId").to_string();
        Session {
            client,
            base: format!("{}/session/{id}", self.url),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait JsonValue {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

/// One WebDriver command: its `value`, or the error WebDriver reported.
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success();
    let v = resp.json_value().await?;
    if ok {
        Ok(v["value"].clone())
    } else {
        Err(format!(
            "{}: {}",
            v["value"]["error"], v["value"]["message"]
        ))
    }
}

/// A browser session; closed when dropped (best effort).
pub(crate) struct Session {
    client: reqwest::Client,
    base: String,
}

impl Session {
    async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        call(&self.client, method, &format!("{}{path}", self.base), body).await
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub(crate) async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
        .unwrap_or_else(|e| panic!("execute {script:?}: {e}"))
    }

    /// The rendered text of the first element matching `css`, if any.
    pub(crate) async fn text_of(&self, css: &str) -> Option<String> {
        let v = self
            .execute(
                "var e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// The WebDriver id of the first element matching `css`.
    async fn element(&self, css: &str) -> String {
        let found = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        // The reference is the object's one value (its key is W3C's
        // element identifier constant).
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("find {css}: no element reference in {found}"))
            .to_string()
    }

    /// Types `text` into the element (for a file input: a local path to
    /// upload).
    pub(crate) async fn send_keys(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await
        .unwrap_or_else(|e| panic!("send keys to {css}: {e}"));
    }

    pub(crate) async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Polls `script` (which returns a value or null) until it returns
    /// something other than null/false, or panics after `timeout` naming
    /// `what`. WebDriver waits for the page, never a fixed sleep.
    pub(crate) async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(script, vec![]).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if Instant::now() >= deadline {
                let body = self
                    .execute(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await;
                panic!("timed out after {timeout:?} waiting for {what}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", None)
            .await
            .expect("screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("screenshot is base64")
    }

    /// Resizes the window so the whole page fits (for full-page shots).
    pub(crate) async fn fit_height(&self, width: u64) {
        let h = self
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .as_u64()
            .unwrap_or(1000);
        let _ = self
            .cmd(
                reqwest::Method::POST,
                "/window/rect",
                Some(json!({"width": width, "height": h + 140})),
            )
            .await;
    }

    pub(crate) async fn close(self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
    }
}
