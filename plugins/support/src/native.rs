//! The native watch-API constants, from `agentfs_vocab::native` (re-exported
//! so the providers keep one import path).

pub use agentfs_vocab::native::*;
