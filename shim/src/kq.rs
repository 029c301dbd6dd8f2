//! The kevent hook's bookkeeping, platform-independent (the FFI around it
//! is in `macos/kevent.rs`; this part is unit-tested on every platform).
//!
//! For each kqueue the program made, the shim keeps a [`KqState`]: the
//! program's `EVFILT_VNODE` registrations on fds opened in the branch (the
//! daemon's watch service synthesizes their events), the records the
//! daemon sent that the program has not received yet, and the doorbell: the
//! shim's end of a socket pair registered in the same kqueue as
//! `EVFILT_READ`, whose ident is that socket's fd number (reserved: the
//! program cannot hold the same fd, so no registration of its own can
//! collide). The daemon writes 32-byte `struct kevent` records into the
//! other end; that makes the kernel wake `kevent()`, the shim reads them
//! ([`KqState::ingest`]), filters the doorbell's own record out of the
//! kernel's results ([`KqState::take_doorbell`]) and appends queued
//! records ([`KqState::drain`]) with the program's own ident, fflags and
//! udata, honouring `EV_ONESHOT`, `EV_CLEAR`, `EV_DISPATCH`, `EV_ENABLE`,
//! `EV_DISABLE`, `EV_DELETE` and the caller's `nevents`. Registrations of
//! other filters and of fds outside the branch stay native.

use std::collections::{HashMap, VecDeque};

pub use agentfs_vocab::native::kqueue::{
    EVFILT_VNODE, EV_ADD, EV_CLEAR, EV_DELETE, EV_ENABLE, EV_ONESHOT, KEVENT_SIZE, NOTE_ALL_VNODE,
};

/// `EVFILT_READ` (macOS `<sys/event.h>`).
pub const EVFILT_READ: i16 = -1;
/// kevent flag: disable the event (it stays registered).
pub const EV_DISABLE: u16 = 0x0008;
/// kevent flag: return an `EV_ERROR` record for each change.
pub const EV_RECEIPT: u16 = 0x0040;
/// kevent flag: disable the event after each delivery.
pub const EV_DISPATCH: u16 = 0x0080;
/// kevent flag on a returned record: `data` is an errno.
pub const EV_ERROR: u16 = 0x4000;

#[cfg(target_os = "macos")]
const _: () = {
    assert!(EVFILT_READ == libc::EVFILT_READ);
    assert!(EV_DISABLE == libc::EV_DISABLE);
    assert!(EV_RECEIPT == libc::EV_RECEIPT);
    assert!(EV_DISPATCH == libc::EV_DISPATCH);
    assert!(EV_ERROR == libc::EV_ERROR);
};

/// A kevent record, whatever the struct it came in (`kevent`, `kevent64_s`,
/// `kevent_qos_s`): the fields the hook looks at and gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kev {
    /// Identifier (for vnode and read filters, the fd).
    pub ident: u64,
    /// Filter.
    pub filter: i16,
    /// `EV_*` flags.
    pub flags: u16,
    /// Filter flags (`NOTE_*`).
    pub fflags: u32,
    /// Filter data.
    pub data: i64,
    /// The program's opaque value.
    pub udata: u64,
}

impl Kev {
    /// Parses one 32-byte record as the daemon writes it (macOS 64-bit
    /// `struct kevent`, native endian).
    pub fn from_wire(b: &[u8; KEVENT_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_ne_bytes(a)
        };
        Kev {
            ident: u64_at(0),
            filter: i16::from_ne_bytes([b[8], b[9]]),
            flags: u16::from_ne_bytes([b[10], b[11]]),
            fflags: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            data: u64_at(16) as i64,
            udata: u64_at(24),
        }
    }
}

/// One of the program's `EVFILT_VNODE` registrations on a branch fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reg {
    /// The daemon's watch id (0 until registered).
    pub watch_id: u64,
    /// The program's flags (`EV_ONESHOT`, `EV_CLEAR`, `EV_DISPATCH`, ...).
    pub flags: u16,
    /// The `NOTE_*` fflags asked for.
    pub fflags: u32,
    /// The program's udata.
    pub udata: u64,
    /// `EV_DISABLE`d (or fired under `EV_DISPATCH`).
    pub disabled: bool,
}

/// What the hook must do with one entry of the program's changelist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Not the shim's business: pass it to the kernel.
    Native,
    /// A new vnode registration on a branch fd: register it with the daemon
    /// (path of the fd, these fflags) and record the watch id with
    /// [`KqState::registered`].
    Register {
        /// The fd.
        ident: u64,
        /// The fflags asked for.
        fflags: u32,
    },
    /// An existing registration was updated in place (flags, fflags,
    /// udata, enable/disable): nothing to tell the daemon.
    Updated,
    /// `EV_DELETE` of a registration: unregister this watch id.
    Unregister(u64),
    /// Refused with this errno (`EV_ERROR` record or `-1`): `EV_DELETE` or
    /// `EV_ENABLE` of nothing (`ENOENT`), or a change aimed at the
    /// doorbell's reserved ident (`EBADF`: the program holds no such fd).
    Error(i32),
}

/// A record the program has not received yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    ident: u64,
    fflags: u32,
}

/// The shim's view of one of the program's kqueues.
#[derive(Debug, Default)]
pub struct KqState {
    /// The shim's id for it (the daemon's watch instance).
    pub id: u64,
    /// The doorbell: the fd number of the shim's socket end, registered in
    /// this kqueue as `EVFILT_READ` (`None` before the first branch
    /// registration).
    pub doorbell: Option<u64>,
    regs: HashMap<u64, Reg>,
    /// One entry per ident at most (a knote ORs its fflags).
    pending: VecDeque<Pending>,
    /// Bytes of a record not complete yet (the socket is a stream).
    partial: Vec<u8>,
}

impl KqState {
    /// A kqueue with id `id` and no registrations yet.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Whether `(ident, filter)` is the doorbell's own registration.
    pub fn is_doorbell(&self, ident: u64, filter: i16) -> bool {
        filter == EVFILT_READ && self.doorbell == Some(ident)
    }

    /// Whether the program has vnode registrations here handled by the
    /// shim.
    pub fn has_registrations(&self) -> bool {
        !self.regs.is_empty()
    }

    /// The registration of fd `ident`, if the shim holds one.
    pub fn reg(&self, ident: u64) -> Option<&Reg> {
        self.regs.get(&ident)
    }

    /// Every daemon watch id held (to re-register after a daemon restart,
    /// or to unregister at `close` of the kqueue).
    pub fn watches(&self) -> impl Iterator<Item = (u64, &Reg)> {
        self.regs.iter().map(|(&i, r)| (i, r))
    }

    /// Decides what to do with one change. `in_branch` says whether the
    /// change's ident is an fd the shim opened in the branch (asked only
    /// for vnode changes).
    pub fn apply(&mut self, c: &Kev, in_branch: impl FnOnce(u64) -> bool) -> Change {
        if self.doorbell.is_some_and(|d| d == c.ident) {
            // Whatever the filter: the program has no fd with this number.
            return Change::Error(libc::EBADF);
        }
        if c.filter != EVFILT_VNODE {
            return Change::Native;
        }
        let known = self.regs.contains_key(&c.ident);
        if !known && !in_branch(c.ident) {
            return Change::Native;
        }
        if c.flags & EV_DELETE != 0 {
            return match self.regs.remove(&c.ident) {
                Some(r) => {
                    self.pending.retain(|p| p.ident != c.ident);
                    Change::Unregister(r.watch_id)
                }
                None => Change::Error(libc::ENOENT),
            };
        }
        let keep = EV_ONESHOT | EV_CLEAR | EV_DISPATCH;
        if let Some(r) = self.regs.get_mut(&c.ident) {
            if c.flags & EV_ADD != 0 {
                r.flags = c.flags & keep;
                r.fflags = c.fflags;
                r.udata = c.udata;
                r.disabled = false;
            }
            if c.flags & EV_DISABLE != 0 {
                r.disabled = true;
            } else if c.flags & EV_ENABLE != 0 {
                r.disabled = false;
            }
            let f = r.fflags;
            // Pending flags the new fflags no longer ask for are dropped.
            for p in self.pending.iter_mut().filter(|p| p.ident == c.ident) {
                p.fflags &= f;
            }
            self.pending.retain(|p| p.fflags != 0);
            return Change::Updated;
        }
        if c.flags & EV_ADD == 0 {
            return Change::Error(libc::ENOENT);
        }
        self.regs.insert(
            c.ident,
            Reg {
                watch_id: 0,
                flags: c.flags & keep,
                fflags: c.fflags,
                udata: c.udata,
                disabled: c.flags & EV_DISABLE != 0,
            },
        );
        Change::Register {
            ident: c.ident,
            fflags: c.fflags,
        }
    }

    /// Records the daemon's watch id for a [`Change::Register`].
    pub fn registered(&mut self, ident: u64, watch_id: u64) {
        if let Some(r) = self.regs.get_mut(&ident) {
            r.watch_id = watch_id;
        }
    }

    /// Forgets a registration the daemon refused (or the fd being closed):
    /// returns its watch id when it had one.
    pub fn forget(&mut self, ident: u64) -> Option<u64> {
        self.pending.retain(|p| p.ident != ident);
        self.regs
            .remove(&ident)
            .map(|r| r.watch_id)
            .filter(|&w| w != 0)
    }

    /// Takes bytes read from the doorbell: complete records are queued
    /// (fflags ORed into a record already queued for the same fd, filtered
    /// by what the registration asks for); a partial record waits for the
    /// rest. Records for fds no longer registered are dropped.
    pub fn ingest(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let whole = self.partial.len() / KEVENT_SIZE * KEVENT_SIZE;
        let records: Vec<Kev> = self.partial[..whole]
            .chunks_exact(KEVENT_SIZE)
            .map(|c| {
                let mut a = [0u8; KEVENT_SIZE];
                a.copy_from_slice(c);
                Kev::from_wire(&a)
            })
            .collect();
        self.partial.drain(..whole);
        for k in records {
            if k.filter != EVFILT_VNODE {
                continue;
            }
            let Some(r) = self.regs.get(&k.ident) else {
                continue;
            };
            self.queue(k.ident, k.fflags & r.fflags);
        }
    }

    fn queue(&mut self, ident: u64, fflags: u32) {
        if fflags == 0 {
            return;
        }
        match self.pending.iter_mut().find(|p| p.ident == ident) {
            Some(p) => p.fflags |= fflags,
            None => self.pending.push_back(Pending { ident, fflags }),
        }
    }

    /// Whether records can be returned now (some queued for an enabled
    /// registration).
    pub fn ready(&self) -> bool {
        self.pending
            .iter()
            .any(|p| self.regs.get(&p.ident).is_some_and(|r| !r.disabled))
    }

    /// Removes the doorbell's record from the kernel's results (in place,
    /// order kept); returns how many remain and whether it was there.
    pub fn take_doorbell(&self, out: &mut [Kev]) -> (usize, bool) {
        let mut n = 0;
        let mut rang = false;
        for i in 0..out.len() {
            if self.is_doorbell(out[i].ident, out[i].filter) {
                rang = true;
                continue;
            }
            out[n] = out[i];
            n += 1;
        }
        (n, rang)
    }

    /// Up to `max` records for the program, oldest first, with its ident,
    /// flags and udata. What does not fit stays queued. After delivery:
    /// `EV_ONESHOT` deletes the registration (its watch id is returned in
    /// the second list, to unregister), `EV_DISPATCH` disables it,
    /// `EV_CLEAR` resets its state; without any of them the record stays
    /// active (as the kernel's vnode filter does) and is returned again by
    /// the next call.
    pub fn drain(&mut self, max: usize) -> (Vec<Kev>, Vec<u64>) {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        let mut keep = VecDeque::new();
        let mut again = Vec::new();
        while let Some(p) = self.pending.pop_front() {
            let Some(r) = self.regs.get_mut(&p.ident) else {
                continue;
            };
            if out.len() >= max || r.disabled {
                keep.push_back(p);
                continue;
            }
            out.push(Kev {
                ident: p.ident,
                filter: EVFILT_VNODE,
                flags: EV_ADD | r.flags,
                fflags: p.fflags,
                data: 0,
                udata: r.udata,
            });
            if r.flags & EV_ONESHOT != 0 {
                let r = self.regs.remove(&p.ident).expect("present");
                if r.watch_id != 0 {
                    gone.push(r.watch_id);
                }
            } else if r.flags & EV_DISPATCH != 0 {
                r.disabled = true;
            } else if r.flags & EV_CLEAR == 0 {
                again.push(p);
            }
        }
        keep.extend(again);
        self.pending = keep;
        (out, gone)
    }
}

/// The timeout left of `total_ns` after `elapsed_ns` (`None`: wait
/// forever); never negative.
pub fn remaining(total_ns: Option<u64>, elapsed_ns: u64) -> Option<u64> {
    total_ns.map(|t| t.saturating_sub(elapsed_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_vocab::native::kqueue::{NOTE_DELETE, NOTE_EXTEND, NOTE_RENAME, NOTE_WRITE};

    const EVFILT_TIMER: i16 = -7;

    fn add(ident: u64, flags: u16, fflags: u32, udata: u64) -> Kev {
        Kev {
            ident,
            filter: EVFILT_VNODE,
            flags: EV_ADD | flags,
            fflags,
            data: 0,
            udata,
        }
    }

    fn wire(ident: u64, fflags: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ident.to_ne_bytes());
        b.extend_from_slice(&EVFILT_VNODE.to_ne_bytes());
        b.extend_from_slice(&EV_CLEAR.to_ne_bytes());
        b.extend_from_slice(&fflags.to_ne_bytes());
        b.extend_from_slice(&0i64.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
        b
    }

    /// A kqueue with a doorbell at fd 900 and fd 5 registered.
    fn kq(flags: u16, fflags: u32) -> KqState {
        let mut k = KqState::new(1);
        k.doorbell = Some(900);
        assert_eq!(
            k.apply(&add(5, flags, fflags, 0xABC), |_| true),
            Change::Register { ident: 5, fflags }
        );
        k.registered(5, 77);
        k
    }

    #[test]
    fn wire_records_have_the_macos_kevent_layout() {
        // ident u64 @0, filter i16 @8, flags u16 @10, fflags u32 @12,
        // data i64 @16, udata u64 @24 (as the kqueue provider encodes).
        let mut b = [0u8; KEVENT_SIZE];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..10].copy_from_slice(&EVFILT_VNODE.to_ne_bytes());
        b[10..12].copy_from_slice(&EV_CLEAR.to_ne_bytes());
        b[12..16].copy_from_slice(&NOTE_WRITE.to_ne_bytes());
        b[16..24].copy_from_slice(&(-3i64).to_ne_bytes());
        b[24..32].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(
            Kev::from_wire(&b),
            Kev {
                ident: 42,
                filter: EVFILT_VNODE,
                flags: EV_CLEAR,
                fflags: NOTE_WRITE,
                data: -3,
                udata: 9,
            }
        );
    }

    #[test]
    fn other_filters_and_fds_outside_the_branch_stay_native() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        let timer = Kev {
            ident: 5,
            filter: EVFILT_TIMER,
            flags: EV_ADD,
            ..Kev::default()
        };
        assert_eq!(k.apply(&timer, |_| true), Change::Native);
        let read = Kev {
            ident: 6,
            filter: EVFILT_READ,
            flags: EV_ADD,
            ..Kev::default()
        };
        assert_eq!(k.apply(&read, |_| true), Change::Native);
        assert_eq!(
            k.apply(&add(8, EV_CLEAR, NOTE_WRITE, 0), |_| false),
            Change::Native
        );
    }

    #[test]
    fn the_doorbell_ident_is_reserved() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        let grab = Kev {
            ident: 900,
            filter: EVFILT_READ,
            flags: EV_DELETE,
            ..Kev::default()
        };
        assert_eq!(k.apply(&grab, |_| true), Change::Error(libc::EBADF));
        assert_eq!(
            k.apply(&add(900, 0, NOTE_WRITE, 0), |_| true),
            Change::Error(libc::EBADF)
        );
        assert!(k.is_doorbell(900, EVFILT_READ));
        assert!(!k.is_doorbell(900, EVFILT_VNODE));
        assert!(!k.is_doorbell(5, EVFILT_READ));
    }

    #[test]
    fn records_carry_the_programs_ident_udata_and_flags() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE));
        assert!(k.ready());
        let (out, gone) = k.drain(8);
        assert_eq!(
            out,
            vec![Kev {
                ident: 5,
                filter: EVFILT_VNODE,
                flags: EV_ADD | EV_CLEAR,
                fflags: NOTE_WRITE,
                data: 0,
                udata: 0xABC,
            }]
        );
        assert!(gone.is_empty());
        assert!(!k.ready(), "EV_CLEAR: delivered once");
        assert_eq!(k.drain(8).0, vec![]);
    }

    #[test]
    fn fflags_are_filtered_and_merged_per_fd() {
        let mut k = kq(EV_CLEAR, NOTE_WRITE | NOTE_EXTEND);
        let mut b = wire(5, NOTE_WRITE);
        b.extend(wire(5, NOTE_EXTEND | NOTE_RENAME));
        b.extend(wire(6, NOTE_WRITE)); // not registered: dropped
        k.ingest(&b);
        let (out, _) = k.drain(8);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].fflags,
            NOTE_WRITE | NOTE_EXTEND,
            "NOTE_RENAME not asked"
        );
        k.ingest(&wire(5, NOTE_RENAME));
        assert!(!k.ready(), "nothing asked for");
    }

    #[test]
    fn partial_records_wait_for_the_rest() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        let b = wire(5, NOTE_WRITE);
        k.ingest(&b[..7]);
        assert!(!k.ready());
        k.ingest(&b[7..]);
        assert_eq!(k.drain(1).0[0].fflags, NOTE_WRITE);
    }

    #[test]
    fn nevents_is_respected_and_the_rest_stays_queued_in_order() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        for fd in [6, 7] {
            k.apply(&add(fd, EV_CLEAR, NOTE_ALL_VNODE, fd), |_| true);
            k.registered(fd, fd + 100);
        }
        let mut b = wire(7, NOTE_WRITE);
        b.extend(wire(5, NOTE_WRITE));
        b.extend(wire(6, NOTE_DELETE));
        k.ingest(&b);
        let (first, _) = k.drain(2);
        assert_eq!(first.iter().map(|r| r.ident).collect::<Vec<_>>(), [7, 5]);
        let (rest, _) = k.drain(2);
        assert_eq!(rest.iter().map(|r| r.ident).collect::<Vec<_>>(), [6]);
        assert_eq!(k.drain(0).0, vec![]);
    }

    #[test]
    fn oneshot_deletes_and_unregisters() {
        let mut k = kq(EV_ONESHOT, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE));
        let (out, gone) = k.drain(4);
        assert_eq!(out[0].flags, EV_ADD | EV_ONESHOT);
        assert_eq!(gone, vec![77]);
        assert!(k.reg(5).is_none());
        k.ingest(&wire(5, NOTE_WRITE));
        assert!(!k.ready(), "deleted");
    }

    #[test]
    fn dispatch_disables_until_enabled_and_keeps_what_came_meanwhile() {
        let mut k = kq(EV_DISPATCH | EV_CLEAR, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE));
        assert_eq!(k.drain(4).0.len(), 1);
        k.ingest(&wire(5, NOTE_EXTEND));
        assert!(!k.ready(), "disabled after delivery");
        assert_eq!(k.drain(4).0, vec![]);
        let enable = Kev {
            ident: 5,
            filter: EVFILT_VNODE,
            flags: EV_ENABLE,
            ..Kev::default()
        };
        assert_eq!(k.apply(&enable, |_| true), Change::Updated);
        assert_eq!(k.drain(4).0[0].fflags, NOTE_EXTEND);
    }

    #[test]
    fn without_clear_the_record_stays_active() {
        let mut k = kq(0, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE));
        assert_eq!(k.drain(4).0.len(), 1);
        assert_eq!(k.drain(4).0.len(), 1, "level-triggered, as the kernel");
    }

    #[test]
    fn delete_unregisters_and_drops_queued_records() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE));
        let del = Kev {
            ident: 5,
            filter: EVFILT_VNODE,
            flags: EV_DELETE,
            ..Kev::default()
        };
        assert_eq!(k.apply(&del, |_| true), Change::Unregister(77));
        assert!(!k.ready());
        assert_eq!(k.apply(&del, |_| true), Change::Error(libc::ENOENT));
        assert!(!k.has_registrations());
    }

    #[test]
    fn re_adding_updates_in_place() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        k.ingest(&wire(5, NOTE_WRITE | NOTE_DELETE));
        assert_eq!(
            k.apply(&add(5, EV_CLEAR, NOTE_DELETE, 0xDEF), |_| true),
            Change::Updated
        );
        let (out, _) = k.drain(4);
        assert_eq!((out[0].fflags, out[0].udata), (NOTE_DELETE, 0xDEF));
        assert_eq!(k.reg(5).unwrap().watch_id, 77);
    }

    #[test]
    fn the_doorbells_record_never_reaches_the_program() {
        let k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        let timer = Kev {
            ident: 1,
            filter: EVFILT_TIMER,
            ..Kev::default()
        };
        let bell = Kev {
            ident: 900,
            filter: EVFILT_READ,
            data: 32,
            ..Kev::default()
        };
        let sock = Kev {
            ident: 900,
            filter: EVFILT_VNODE,
            ..Kev::default()
        };
        let mut out = [timer, bell, sock];
        let (n, rang) = k.take_doorbell(&mut out);
        assert!(rang);
        assert_eq!(&out[..n], &[timer, sock]);
        let mut none = [timer];
        assert_eq!(k.take_doorbell(&mut none), (1, false));
    }

    #[test]
    fn forgetting_returns_the_watch() {
        let mut k = kq(EV_CLEAR, NOTE_ALL_VNODE);
        assert_eq!(k.forget(5), Some(77));
        assert_eq!(k.forget(5), None);
    }

    #[test]
    fn timeouts_count_down_and_never_go_negative() {
        assert_eq!(remaining(None, 5), None);
        assert_eq!(remaining(Some(10), 3), Some(7));
        assert_eq!(remaining(Some(10), 30), Some(0));
    }
}
