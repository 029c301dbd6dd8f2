//! Compaction: replaces a branch's chain of committed layers by one new
//! committed layer with the same merged view over the base.
//!
//! The new layer is built as if it were an active layer on top of the old
//! chain: every directory the old layers touch is created in it (with the
//! merged mode and times), every file or symlink whose top copy lives in a
//! layer is cloned into it (reflink when the backstore can, else copy),
//! every base entry the chain deletes gets a whiteout, and every directory
//! whose base content the chain hides gets an opaque marker. Entries that
//! only the base has are not touched, so the cost is that of the changes,
//! not of the base.

use std::{collections::BTreeSet, ffi::OsString, os::fd::AsFd};

use super::{
    copy_up::Writer,
    error::{CoreError, CoreResult},
    layer_names::encode,
    metadata::FileKind,
    path::BranchPath,
    view::{DirFrame, LayerKind},
};

/// Fills the writer's active layer (the new layer, empty, on top of the
/// chain to compact) so that it alone over the base shows what the chain
/// shows.
pub fn flatten_into(w: &Writer<'_>) -> CoreResult<()> {
    let view = w.view;
    let base = view.layers.iter().position(|l| l.kind == LayerKind::Base);
    let root = view.root_frame()?;
    visit(w, &BranchPath::root(), &root, base)?;
    // The work directory is empty now; a committed layer does not need it.
    let _ = rustix::fs::unlinkat(
        view.layers[0].root.as_fd(),
        super::layer_names::WORK_DIR,
        rustix::fs::AtFlags::REMOVEDIR,
    );
    Ok(())
}

fn visit(
    w: &Writer<'_>,
    path: &BranchPath,
    frame: &DirFrame,
    base: Option<usize>,
) -> CoreResult<()> {
    let view = w.view;
    let in_layers = frame.parts.iter().any(|(i, _)| *i != 0 && Some(*i) != base);
    if !in_layers {
        return Ok(()); // only the base has this directory: nothing to record
    }
    let here = w.active_dir(path)?;
    // Does the base have this directory, and does it show through?
    let base_dir = match base {
        Some(b) => base_frame_dir(w, path, b)?,
        None => None,
    };
    let base_shows = frame.parts.iter().any(|(i, _)| Some(*i) == base);
    let merged = view.list_frame(frame)?;
    let shown: BTreeSet<&OsString> = merged.iter().map(|e| &e.name).collect();
    if let (Some(bdir), true) = (&base_dir, base_shows) {
        for (name, _) in super::beneath::list_dir(bdir.as_fd())
            .map_err(|e| CoreError::io(format!("list base {path}"), e))?
        {
            if !shown.contains(&name) {
                w.make_whiteout(here.as_fd(), &name)?;
            }
        }
    }
    for e in &merged {
        let Some(hit) = view.lookup_in(frame, &e.name, false)? else {
            continue;
        };
        if Some(hit.layer) == base {
            continue; // unchanged from the base
        }
        let child = path.join(&e.name);
        if hit.st.kind == FileKind::Dir {
            let sub = view.frame_of(frame, &hit, &e.name)?;
            visit(w, &child, &sub, base)?;
        } else {
            // The new layer is invisible until the graph names it, so
            // entries go straight to their place (no temporary + rename).
            let stored = encode(&e.name)?;
            match hit.st.kind {
                FileKind::File => {
                    let here_path = w.view.physical_path(0, path);
                    w.clone_file(&hit, &child, here.as_fd(), &here_path, &stored)?
                }
                FileKind::Symlink => w.copy_symlink(&hit, here.as_fd(), &stored)?,
                _ => {
                    return Err(CoreError::Unsupported(format!(
                        "{child}: copying a special file"
                    )))
                }
            }
        }
    }
    // Last: while the new layer is being filled, the view used to copy
    // entries up must still see through this directory.
    if base_dir.is_some() && !base_shows {
        let marker = super::layer_names::OPAQUE_MARKER;
        super::beneath::open_file_at(
            here.as_fd(),
            std::ffi::OsStr::new(marker),
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE,
            0o600,
        )
        .map_err(|e| CoreError::io(format!("mark {path} opaque"), e))?;
    }
    Ok(())
}

/// The base's directory at `path`, if the base has one there (whether or
/// not the chain lets it show).
fn base_frame_dir(
    w: &Writer<'_>,
    path: &BranchPath,
    base: usize,
) -> CoreResult<Option<std::os::fd::OwnedFd>> {
    let root = w.view.layers[base].root.as_fd();
    match super::beneath::open_dir_beneath(root, path.components()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(CoreError::io(format!("open base {path}"), e)),
    }
}
