//! `BranchChain`: the directories a branch reads through, for clients that
//! resolve reads in process (the shim) instead of asking per lookup.

use agentfs_proto::{BranchChain, WireError};

use super::{convert::wire_error, state::Daemon, Session};

impl Daemon {
    /// The chain of `branch` (the connection's when `None`).
    pub(super) fn branch_chain(
        &self,
        s: &Session,
        branch: Option<String>,
    ) -> Result<BranchChain, WireError> {
        let branch = branch.or_else(|| s.branch.clone()).ok_or_else(|| {
            WireError::new(
                agentfs_vocab::codes::INVALID_ARGUMENT,
                "no branch: name one in the request, or in the connection's Hello",
            )
        })?;
        let chain = self.with_store(|st| st.branch_chain(&branch).map_err(|e| wire_error(&e)))?;
        let text = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut out = BranchChain {
            graph_file: text(&chain.graph_file),
            generation_file: text(&chain.generation_file),
            namespace_slot: u32::try_from(chain.namespace_slot).ok(),
            graph: Some(chain.graph),
            ..BranchChain::default()
        };
        for (path, is_base) in &chain.layers {
            if *is_base {
                out.base = Some(text(path));
            } else {
                out.layers.push(text(path));
            }
        }
        Ok(out)
    }
}
