//! An APFS RAM disk, provisioned with the system tools:
//!
//! 1. `hdiutil attach -nomount ram://<size_mb*2048>` -> `/dev/diskN`
//! 2. `diskutil apfs createContainer /dev/diskN` -> container `diskM`
//! 3. `diskutil apfs addVolume diskM APFS AgentFS-<pid>-<tag>` -> `diskMsK`
//!    (mounted by diskutil at `/Volumes/AgentFS-<pid>-<tag>`)
//! 4. `diskutil info diskMsK` -> its mount point (`diskutil mount` first if
//!    it was not mounted).
//!
//! Destroying it reverses all of that in one step: `hdiutil detach` of the
//! RAM device unmounts the volume, removes the synthesized container and
//! frees the memory (`-force` if a plain detach is refused). A failure in
//! any provisioning step detaches what was made so far. Dropping a
//! [`RamDisk`] destroys it (RAII).
//!
//! A process killed while it owned a RAM disk cannot clean up; the next
//! start calls [`clean_leftovers`], which finds RAM disks whose volume name
//! carries the pid of a process that no longer exists and detaches them.

use std::path::{Path, PathBuf};

use agentfs_plugin_api::{ErrorCode, PluginError, PluginResult};

use crate::{
    names::{process_alive, volume_name, volume_owner},
    options::RamdiskOptions,
    parse,
    tools::{Tool, ToolError, Tools},
};

/// An attached RAM device, detached on drop unless disarmed. Guards every
/// provisioning step so a failure leaves nothing attached.
#[derive(Debug)]
struct Attached {
    tools: Tools,
    device: String,
    armed: bool,
}

impl Attached {
    fn detach(&mut self) -> PluginResult<()> {
        self.armed = false;
        detach(&self.tools, &self.device)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.detach() {
                tracing::warn!(device = %self.device, error = %e, "could not detach RAM disk");
            }
        }
    }
}

/// Detaches a RAM device: `hdiutil detach <dev>`, then `hdiutil detach
/// -force <dev>` if the plain detach is refused.
pub fn detach(tools: &Tools, device: &str) -> PluginResult<()> {
    match tools.run(Tool::Hdiutil, &["detach", device]) {
        Ok(_) => Ok(()),
        Err(first) => {
            tracing::info!(%device, error = %first, "detach refused; forcing");
            tools
                .run(Tool::Hdiutil, &["detach", "-force", device])
                .map(|_| ())
                .map_err(|e| {
                    let mut e = PluginError::from(e);
                    e.message =
                        format!("could not detach RAM disk {device}: {}", e.message()).into();
                    e
                })
        }
    }
}

/// A provisioned APFS RAM disk with one mounted volume.
#[derive(Debug)]
pub struct RamDisk {
    attached: Attached,
    container: String,
    volume: String,
    name: String,
    mount_point: PathBuf,
}

impl RamDisk {
    /// Provisions a RAM disk of `opts.size_mb` MiB whose volume name
    /// carries this process's pid.
    pub fn create(tools: &Tools, opts: RamdiskOptions) -> PluginResult<Self> {
        let step = |what: &'static str| {
            move |e: ToolError| {
                let mut e = PluginError::from(e);
                e.message = format!("APFS RAM disk: {what}: {}", e.message()).into();
                e
            }
        };
        const OPERATION_DISK: &str = "'Disk from APFS operation' line";
        let device = tools
            .run_and_read(
                Tool::Hdiutil,
                &["attach", "-nomount", &opts.ram_url()],
                "/dev/disk line",
                parse::attached_device,
            )
            .map_err(step("attach"))?;
        let attached = Attached {
            tools: tools.clone(),
            device: device.clone(),
            armed: true,
        };
        tracing::info!(%device, size_mb = opts.size_mb, "attached RAM disk");

        let container = tools
            .run_and_read(
                Tool::Diskutil,
                &["apfs", "createContainer", &device],
                OPERATION_DISK,
                parse::apfs_operation_disk,
            )
            .map_err(step("create container"))?;

        let name = volume_name(std::process::id());
        let volume = tools
            .run_and_read(
                Tool::Diskutil,
                &["apfs", "addVolume", &container, "APFS", &name],
                OPERATION_DISK,
                parse::apfs_operation_disk,
            )
            .map_err(step("add volume"))?;

        let mount_point = match mount_point_of(tools, &volume).map_err(step("find mount point"))? {
            Some(m) => m,
            None => {
                tools
                    .run(Tool::Diskutil, &["mount", &volume])
                    .map_err(step("mount volume"))?;
                mount_point_of(tools, &volume)
                    .map_err(step("find mount point"))?
                    .ok_or_else(|| {
                        PluginError::new(
                            ErrorCode::IO,
                            format!("APFS RAM disk: volume {volume} ({name}) is not mounted after `diskutil mount`"),
                        )
                    })?
            }
        };
        if !mount_point.is_dir() {
            return Err(PluginError::new(
                ErrorCode::IO,
                format!(
                    "APFS RAM disk: diskutil reports volume {volume} mounted at {}, which is not a directory",
                    mount_point.display()
                ),
            ));
        }
        tracing::info!(%device, %container, %volume, mount = %mount_point.display(), "APFS RAM disk ready");
        // Every early return above dropped `attached`, which detached the
        // device; from here the RamDisk owns it.
        Ok(Self {
            attached,
            container,
            volume,
            name,
            mount_point,
        })
    }

    /// Where the volume is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The volume's name (`AgentFS-<pid>-<tag>`).
    pub fn volume_name(&self) -> &str {
        &self.name
    }

    /// The RAM device (`/dev/diskN`).
    pub fn device(&self) -> &str {
        &self.attached.device
    }

    /// The APFS container (`diskM`).
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The APFS volume (`diskMsK`).
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Destroys the RAM disk now, reporting failure (dropping does the same
    /// but can only log).
    pub fn destroy(mut self) -> PluginResult<()> {
        self.attached.detach()
    }

    /// Forgets the RAM disk without destroying it, as a killed process would.
    #[cfg(test)]
    fn leak(mut self) {
        self.attached.armed = false;
    }
}

/// The mount point `diskutil info` reports for `volume`, if mounted.
fn mount_point_of(tools: &Tools, volume: &str) -> Result<Option<PathBuf>, ToolError> {
    let out = tools.run(Tool::Diskutil, &["info", volume])?;
    Ok(parse::disk_info(&out.stdout).mount_point)
}

/// A RAM disk left behind by a process that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The RAM device to detach.
    pub device: String,
    /// The volume name that identified it.
    pub volume_name: String,
    /// The dead owner's pid.
    pub owner: u32,
}

/// Finds leftovers in `hdiutil info` output: RAM disks (`ram://` images)
/// with a volume named by this plugin for a pid that `alive` says is gone.
/// A volume's name is read from its mount point, or, when it is not
/// mounted, from `name_of(device)` (`diskutil info`).
pub fn find_leftovers(
    hdiutil_info: &str,
    alive: impl Fn(u32) -> bool,
    name_of: impl Fn(&str) -> Option<String>,
) -> Vec<Leftover> {
    let mut out = Vec::new();
    for img in parse::hdiutil_info(hdiutil_info) {
        if !img.is_ram_disk() {
            continue;
        }
        let Some(device) = img.physical_device() else {
            continue;
        };
        let found = img
            .devices
            .iter()
            .filter(|d| !parse::is_whole_disk(d.dev.trim_start_matches("/dev/")))
            .find_map(|d| {
                let name = match &d.mount_point {
                    Some(m) => m.file_name()?.to_string_lossy().into_owned(),
                    None => name_of(&d.dev)?,
                };
                let owner = volume_owner(&name)?;
                Some((name, owner))
            });
        if let Some((volume_name, owner)) = found {
            if !alive(owner) {
                out.push(Leftover {
                    device: device.to_string(),
                    volume_name,
                    owner,
                });
            }
        }
    }
    out
}

/// Detaches every RAM disk a dead process of this plugin left behind.
/// Returns what was cleaned; failures are logged and skipped (they never
/// stop a new RAM disk from being made).
pub fn clean_leftovers(tools: &Tools) -> Vec<Leftover> {
    clean_leftovers_with(tools, process_alive)
}

/// [`clean_leftovers`] with a chosen liveness check.
pub fn clean_leftovers_with(tools: &Tools, alive: impl Fn(u32) -> bool) -> Vec<Leftover> {
    let info = match tools.run(Tool::Hdiutil, &["info"]) {
        Ok(o) => o.stdout,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list attached images; leftover RAM disks not checked");
            return Vec::new();
        }
    };
    let name_of = |dev: &str| {
        let out = tools.run(Tool::Diskutil, &["info", dev]).ok()?;
        parse::disk_info(&out.stdout).volume_name
    };
    let mut cleaned = Vec::new();
    for l in find_leftovers(&info, &alive, name_of) {
        match tools.run(Tool::Hdiutil, &["detach", "-force", &l.device]) {
            Ok(_) => {
                tracing::warn!(device = %l.device, volume = %l.volume_name, owner = l.owner,
                    "detached a RAM disk left by a process that no longer exists");
                cleaned.push(l);
            }
            Err(e) => {
                tracing::warn!(device = %l.device, error = %e, "could not detach leftover RAM disk")
            }
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTools;
    use agentfs_plugin_api::ErrorCode;

    const SIZE: RamdiskOptions = RamdiskOptions { size_mb: 64 };

    /// Fakes that provision successfully, mounting at `<dir>/mnt`.
    fn working_fakes() -> (FakeTools, PathBuf) {
        let fake = FakeTools::new();
        let mnt = fake.dir().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let attach = fake.fixture("attach", include_str!("../fixtures/hdiutil-attach-ram.txt"));
        let detach = fake.fixture("detach", include_str!("../fixtures/hdiutil-detach.txt"));
        fake.script(
            Tool::Hdiutil,
            &format!(
                "case \"$1\" in attach) cat '{}';; detach) cat '{}';; esac",
                attach.display(),
                detach.display()
            ),
        );
        fake.script(Tool::Diskutil, &diskutil_body(&fake, &mnt, ""));
        (fake, mnt)
    }

    /// A fake diskutil: createContainer, addVolume and info succeed; `extra`
    /// is spliced in front as more `case` arms (first match wins).
    fn diskutil_body(fake: &FakeTools, mnt: &Path, extra: &str) -> String {
        let cc = fake.fixture(
            "cc",
            include_str!("../fixtures/diskutil-apfs-createContainer.txt"),
        );
        let av = fake.fixture(
            "av",
            include_str!("../fixtures/diskutil-apfs-addVolume.txt"),
        );
        format!(
            "case \"$1 $2\" in\n{extra}\n'apfs createContainer') cat '{}';;\n'apfs addVolume') cat '{}';;\n\
             info\\ *) printf '   Device Identifier:   %s\\n   Mount Point:   %s\\n' \"$2\" '{}';;\nesac",
            cc.display(),
            av.display(),
            mnt.display()
        )
    }

    #[test]
    fn provisioning_runs_the_four_steps_in_order_and_destroy_detaches() {
        let (fake, mnt) = working_fakes();
        let rd = RamDisk::create(&fake.tools(), SIZE).unwrap();
        assert_eq!(rd.device(), "/dev/disk4");
        assert_eq!(rd.container(), "disk5");
        assert_eq!(rd.volume(), "disk5s1");
        assert_eq!(rd.mount_point(), mnt);
        assert_eq!(volume_owner(rd.volume_name()), Some(std::process::id()));
        let name = rd.volume_name().to_string();
        rd.destroy().unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                "hdiutil attach -nomount ram://131072".to_string(),
                "diskutil apfs createContainer /dev/disk4".to_string(),
                format!("diskutil apfs addVolume disk5 APFS {name}"),
                "diskutil info disk5s1".to_string(),
                "hdiutil detach /dev/disk4".to_string(),
            ]
        );
    }

    #[test]
    fn dropping_the_ram_disk_detaches_it_and_leaking_does_not() {
        let (fake, _) = working_fakes();
        drop(RamDisk::create(&fake.tools(), SIZE).unwrap());
        assert_eq!(fake.calls().last().unwrap(), "hdiutil detach /dev/disk4");
        assert_eq!(fake.calls().len(), 5);
        RamDisk::create(&fake.tools(), SIZE).unwrap().leak();
        assert_eq!(fake.calls().len(), 9, "a leaked RAM disk is not detached");
        assert!(!fake.calls()[8].starts_with("hdiutil detach"));
    }

    #[test]
    fn a_failing_step_detaches_what_was_attached_and_names_the_step() {
        for (arm, step, code) in [
            (
                "'apfs createContainer') echo 'Error: -69625: Unable to create a new APFS Container' >&2; exit 1;;",
                "create container",
                ErrorCode::IO,
            ),
            (
                "'apfs addVolume') echo 'Error: -69863: Insufficient privileges' >&2; exit 1;;",
                "add volume",
                ErrorCode::PERMISSION_DENIED,
            ),
            (
                "'apfs addVolume') echo 'Started APFS operation'; exit 0;;",
                "add volume",
                ErrorCode::IO,
            ),
            (
                "info\\ *) echo 'Could not find disk: disk5s1' >&2; exit 1;;",
                "find mount point",
                ErrorCode::NOT_FOUND,
            ),
        ] {
            let (fake, mnt) = working_fakes();
            fake.script(Tool::Diskutil, &diskutil_body(&fake, &mnt, arm));
            let e = RamDisk::create(&fake.tools(), SIZE).unwrap_err();
            assert_eq!(e.code, code, "{e}");
            assert!(
                e.message().starts_with(&format!("APFS RAM disk: {step}: ")),
                "{e}"
            );
            assert!(!e.message().contains('\n'), "{e}");
            assert_eq!(
                fake.calls().last().unwrap(),
                "hdiutil detach /dev/disk4",
                "{step}: the RAM disk must be detached"
            );
        }
    }

    #[test]
    fn a_failed_attach_detaches_nothing() {
        let (fake, _) = working_fakes();
        fake.fails(
            Tool::Hdiutil,
            include_str!("../fixtures/hdiutil-attach-no-memory.txt"),
            1,
        );
        let e = RamDisk::create(&fake.tools(), SIZE).unwrap_err();
        assert_eq!(e.code, ErrorCode::NO_SPACE);
        assert_eq!(
            e.message(),
            "APFS RAM disk: attach: `hdiutil attach -nomount ram://131072` failed (exit 1): hdiutil: attach failed - Cannot allocate memory"
        );
        assert_eq!(fake.calls(), vec!["hdiutil attach -nomount ram://131072"]);
    }

    #[test]
    fn an_unmounted_volume_is_mounted_then_looked_up_again() {
        let (fake, mnt) = working_fakes();
        let flag = fake.dir().join("mounted");
        let arms = format!(
            "'mount disk5s1') touch '{f}';;\ninfo\\ *) [ -e '{f}' ] || {{ printf '   Mounted: No\\n'; exit 0; }}; printf '   Mount Point:   %s\\n' '{m}';;",
            f = flag.display(),
            m = mnt.display()
        );
        fake.script(Tool::Diskutil, &diskutil_body(&fake, &mnt, &arms));
        let rd = RamDisk::create(&fake.tools(), SIZE).unwrap();
        assert_eq!(rd.mount_point(), mnt);
        let calls = fake.calls();
        assert_eq!(
            &calls[3..],
            [
                "diskutil info disk5s1",
                "diskutil mount disk5s1",
                "diskutil info disk5s1"
            ]
        );
        rd.leak();
    }

    #[test]
    fn a_volume_that_will_not_mount_or_a_bogus_mount_point_is_an_error_and_detached() {
        let (fake, mnt) = working_fakes();
        fake.script(
            Tool::Diskutil,
            &diskutil_body(&fake, &mnt, "info\\ *) printf '   Mounted: No\\n';;"),
        );
        let e = RamDisk::create(&fake.tools(), SIZE).unwrap_err();
        assert!(
            e.message().contains("not mounted after `diskutil mount`"),
            "{e}"
        );
        assert_eq!(fake.calls().last().unwrap(), "hdiutil detach /dev/disk4");

        let (fake, _) = working_fakes();
        let missing = fake.dir().join("nowhere");
        fake.script(Tool::Diskutil, &diskutil_body(&fake, &missing, ""));
        let e = RamDisk::create(&fake.tools(), SIZE).unwrap_err();
        assert!(e.message().contains("not a directory"), "{e}");
        assert_eq!(fake.calls().last().unwrap(), "hdiutil detach /dev/disk4");
    }

    #[test]
    fn a_refused_detach_is_forced() {
        let fake = FakeTools::new();
        fake.script(
            Tool::Hdiutil,
            "case \"$2\" in -force) echo '\"disk4\" ejected.';; *) echo 'hdiutil: detach failed - Resource busy' >&2; exit 16;; esac",
        );
        detach(&fake.tools(), "/dev/disk4").unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                "hdiutil detach /dev/disk4",
                "hdiutil detach -force /dev/disk4"
            ]
        );
        fake.fails(
            Tool::Hdiutil,
            include_str!("../fixtures/hdiutil-detach-busy.txt"),
            16,
        );
        let e = detach(&fake.tools(), "/dev/disk4").unwrap_err();
        assert_eq!(e.code, ErrorCode::BUSY);
        assert!(
            e.message()
                .starts_with("could not detach RAM disk /dev/disk4: "),
            "{e}"
        );
    }

    #[test]
    fn leftovers_are_ram_disks_of_dead_owners_only() {
        let info = include_str!("../fixtures/hdiutil-info.txt");
        let name_of = |dev: &str| {
            (dev == "/dev/disk9s1").then(|| {
                parse::disk_info(include_str!("../fixtures/diskutil-info-unmounted.txt"))
                    .volume_name
                    .unwrap()
            })
        };
        let found = find_leftovers(info, |pid| pid == 7, name_of);
        assert_eq!(
            found,
            vec![
                Leftover {
                    device: "/dev/disk4".into(),
                    volume_name: "AgentFS-4242-0badc0de".into(),
                    owner: 4242
                },
                Leftover {
                    device: "/dev/disk8".into(),
                    volume_name: "AgentFS-31337-00c0ffee".into(),
                    owner: 31337
                },
            ]
        );
        // Everyone alive: nothing is a leftover, whatever its name.
        assert!(find_leftovers(info, |_| true, name_of).is_empty());
        // Everyone dead: the owner of "AgentFS-7-1234abcd 1" counts too, the
        // disk image and the foreign RAM disk never do.
        let all: Vec<String> = find_leftovers(info, |_| false, name_of)
            .into_iter()
            .map(|l| l.device)
            .collect();
        assert_eq!(all, vec!["/dev/disk4", "/dev/disk8", "/dev/disk10"]);
    }

    #[test]
    fn clean_leftovers_force_detaches_each_and_survives_failures() {
        let fake = FakeTools::new();
        let info = fake.fixture("info", include_str!("../fixtures/hdiutil-info.txt"));
        fake.script(
            Tool::Hdiutil,
            &format!(
                "case \"$1 $3\" in 'info ') cat '{}';; 'detach /dev/disk4') echo 'hdiutil: detach failed - Resource busy' >&2; exit 16;; esac",
                info.display()
            ),
        );
        let unmounted = fake.fixture(
            "unmounted",
            include_str!("../fixtures/diskutil-info-unmounted.txt"),
        );
        fake.script(
            Tool::Diskutil,
            &format!(
                "case \"$2\" in /dev/disk9s1) cat '{}';; *) echo 'Could not find disk' >&2; exit 1;; esac",
                unmounted.display()
            ),
        );
        let cleaned = clean_leftovers_with(&fake.tools(), |pid| pid == 7);
        assert_eq!(
            cleaned.iter().map(|l| l.owner).collect::<Vec<_>>(),
            vec![31337],
            "disk4's detach failed and is skipped, disk8 is cleaned"
        );
        assert_eq!(
            fake.calls(),
            vec![
                "hdiutil info",
                "diskutil info /dev/disk9s1",
                "hdiutil detach -force /dev/disk4",
                "hdiutil detach -force /dev/disk8",
            ]
        );
    }

    #[test]
    fn clean_leftovers_does_nothing_when_hdiutil_info_fails() {
        let fake = FakeTools::new();
        fake.fails(Tool::Hdiutil, "hdiutil: info failed - no driver\n", 1);
        assert!(clean_leftovers_with(&fake.tools(), |_| false).is_empty());
        assert_eq!(fake.calls(), vec!["hdiutil info"]);
    }
}
