//! A branch's chain handed down through the environment: `agentfs run`
//! puts the [`BranchChain`] it asked the daemon for in [`CHAIN_ENV`], and
//! every process of the run reads it at its first branch path instead of
//! asking the daemon (while the graph counter still holds the value the
//! chain names).
//!
//! The value is the MessagePack of the branch's name and its chain (as a
//! frame body encodes them), in lowercase hex.

use serde::{Deserialize, Serialize};

use crate::{BranchChain, FrameError};

/// The environment variable holding a branch's chain.
pub const CHAIN_ENV: &str = "AGENTFS_SHIM_CHAIN";

#[derive(Serialize, Deserialize)]
struct Inherited {
    branch: String,
    chain: BranchChain,
}

/// The value of [`CHAIN_ENV`] for `chain`, the chain of `branch`.
pub fn encode_chain_env(branch: &str, chain: &BranchChain) -> Result<String, FrameError> {
    let body = rmp_serde::to_vec_named(&Inherited {
        branch: branch.to_string(),
        chain: chain.clone(),
    })
    .map_err(|e| FrameError::Encode(e.to_string()))?;
    let mut out = String::with_capacity(body.len() * 2);
    for b in body {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(out)
}

/// The chain a value of [`CHAIN_ENV`] holds, when it is the chain of
/// `branch` and names the graph counter it is current for; `None` for
/// anything else (a value that is not ours, another branch's, a chain
/// without a counter).
pub fn decode_chain_env(value: &[u8], branch: &str) -> Option<BranchChain> {
    if !value.len().is_multiple_of(2) {
        return None;
    }
    let body = value
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect::<Option<Vec<u8>>>()?;
    let i: Inherited = rmp_serde::from_slice(&body).ok()?;
    (i.branch == branch && i.chain.graph.is_some()).then_some(i.chain)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> BranchChain {
        BranchChain {
            layers: vec!["/s/layers/2".into(), "/s/layers/1".into()],
            base: Some("/home/me/proj".into()),
            graph_file: "/s/meta/graph.db".into(),
            generation_file: "/s/meta/generation".into(),
            namespace_slot: Some(7),
            graph: Some(42),
        }
    }

    #[test]
    fn a_chain_comes_back_for_its_branch_only() {
        let v = encode_chain_env("b", &chain()).unwrap();
        assert!(v.bytes().all(|c| HEX.contains(&c)), "{v}");
        assert_eq!(decode_chain_env(v.as_bytes(), "b"), Some(chain()));
        assert_eq!(decode_chain_env(v.as_bytes(), "c"), None);
    }

    #[test]
    fn a_chain_without_its_graph_counter_is_not_taken() {
        let c = BranchChain {
            graph: None,
            ..chain()
        };
        let v = encode_chain_env("b", &c).unwrap();
        assert_eq!(decode_chain_env(v.as_bytes(), "b"), None);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let v = encode_chain_env("b", &chain()).unwrap();
        for bad in [
            "",
            "0",
            "zz",
            "ABCD",
            &v[..v.len() - 2],
            &v[2..],
            &v.to_uppercase(),
        ] {
            assert_eq!(decode_chain_env(bad.as_bytes(), "b"), None, "{bad}");
        }
    }
}
