//! `bench relay --curve`: libzmq's proxy and a bridge with CURVE on their
//! frontends, beside the plain ones, so that what CURVE costs the bridge
//! is compared with what it costs libzmq itself, in the same run.

use super::{Contender, Kind, Proxy};

use crate::{BridgeProcess, Route};
use std::path::{Path, PathBuf};
use zbridge_client::curve::{ClientKeys, KeyPair};

/// The CURVE proxy and bridge, and the key files of the bridge (deleted
/// when dropped).
pub(super) struct Parts {
    proxy: Proxy,
    bridge: BridgeProcess,
    keys: ClientKeys,
    dir: PathBuf,
}

impl Parts {
    /// A CURVE proxy to `upstream` and a bridge run with `flags` plus a
    /// fresh pair's key file.
    pub fn start(exe: &Path, flags: &[String], upstream: &str) -> anyhow::Result<Parts> {
        let pair = KeyPair::generate().map_err(anyhow::Error::msg)?;
        let dir = std::env::temp_dir().join(format!("zbridge-bench-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let secret = dir.join("bridge.key");
        let _ = std::fs::remove_file(&secret);
        pair.write(&secret)?;
        let proxy = Proxy::start_with(Kind::Router, Kind::Dealer, upstream, Some(&secret))?;
        let mut flags = flags.to_vec();
        flags.push(format!("--curve-secret-key-file={}", secret.display()));
        let bridge = BridgeProcess::spawn(exe, &flags)?;
        let keys = ClientKeys {
            server: pair.public,
            pair: KeyPair::generate().map_err(anyhow::Error::msg)?,
        };
        Ok(Parts {
            proxy,
            bridge,
            keys,
            dir,
        })
    }

    /// The CURVE proxy (at index `first`) and the CURVE bridge, measured
    /// against it.
    pub fn contenders(&self, first: usize) -> Vec<Contender> {
        vec![
            Contender {
                name: "libzmq proxy curve",
                endpoint: self.proxy.endpoint.clone(),
                route: Route::Direct,
                baseline: first,
                curve: Some(self.keys.clone()),
            },
            Contender {
                name: "zbridge curve mp",
                endpoint: self.bridge.frontend.clone(),
                route: Route::Multipart,
                baseline: first,
                curve: Some(self.keys.clone()),
            },
            // One frame each way on the CURVE link, as through the proxy
            // (the multipart path adds the target frame: one more box).
            Contender {
                name: "zbridge curve json",
                endpoint: self.bridge.frontend.clone(),
                route: Route::Json,
                baseline: first,
                curve: Some(self.keys.clone()),
            },
        ]
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
