//! The FUSE filesystem: a passthrough to a backing directory whose file data and sizes
//! stay in memory ([`Overlay`]) until the file is fsynced.
//!
//! What is lazy and what is not:
//! - `write`, truncate (`setattr` size, `O_TRUNC`) and size-changing `fallocate` go to the
//!   file's overlay; `fsync`/`fdatasync` of the file writes its overlay into the backing file.
//!   There is no `syncfs` in FUSE: a `syncfs`/`sync` reaches the filesystem as nothing, so it
//!   syncs nothing here (rocketraft and RocksDB only rely on per-file fsync).
//! - Namespace operations (create, mkdir, rename, unlink, rmdir) and attributes (mode,
//!   owner, times) go to the backing directory at once, as if the directory were always
//!   synced, so `fsyncdir` is a no-op. A file created and never synced survives a power
//!   loss with the size and bytes it had at its last sync (empty if never synced). Real
//!   filesystems may lose the name as well; ours does not, which is the kinder half of what
//!   POSIX allows. We chose it because it keeps the layer small and the lost-data case we
//!   test (a log tail that was written but not fsynced) is the one acknowledgements hinge on.
//!
//! Inodes are our own numbers, one per backing file identity (device, inode), never reused
//! in a mount's life: an inode that has unsynced data must keep it even if the kernel
//! forgets the inode, and a deleted file's identity is forgotten at unlink so the backing
//! filesystem reusing its inode number cannot inherit its overlay.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::overlay::Overlay;

/// How long the kernel may cache names and attributes. Short, and the drop invalidates the
/// inodes it touched anyway.
const TTL: Duration = Duration::from_secs(1);

/// The filesystem's state, shared with the control thread that drops unsynced data.
pub struct State {
    root: PathBuf,
    /// Our inode -> its backing path (the last name we saw it under).
    paths: HashMap<u64, PathBuf>,
    /// Backing (device, inode) -> our inode.
    by_backing: HashMap<(u64, u64), u64>,
    next_ino: u64,
    /// Open files: our handle -> (inode, backing file). Backing files are opened read-write
    /// whatever the caller asked for: writes are read-modify-write of pages.
    handles: HashMap<u64, (u64, Arc<File>)>,
    next_fh: u64,
    /// Unsynced data per inode.
    overlays: HashMap<u64, Overlay>,
    /// Bytes made durable by fsync since the mount, for the status report.
    pub synced_bytes: u64,
    /// A disk that lies: fsync succeeds and syncs nothing. Only for checking that the
    /// harness catches the lost acknowledged writes that follow.
    ignore_fsync: bool,
}

/// What one drop threw away.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DropReport {
    /// Unsynced bytes (written or truncated) summed over files.
    pub bytes: u64,
    /// (path under the mount, unsynced bytes), largest first.
    pub files: Vec<(String, u64)>,
}

impl State {
    pub fn new(root: PathBuf, ignore_fsync: bool) -> Self {
        let mut paths = HashMap::new();
        paths.insert(INodeNo::ROOT.0, root.clone());
        let mut by_backing = HashMap::new();
        if let Ok(m) = fs::symlink_metadata(&root) {
            by_backing.insert((m.dev(), m.ino()), INodeNo::ROOT.0);
        }
        Self {
            root,
            paths,
            by_backing,
            next_ino: INodeNo::ROOT.0 + 1,
            handles: HashMap::new(),
            next_fh: 1,
            overlays: HashMap::new(),
            synced_bytes: 0,
            ignore_fsync,
        }
    }

    /// Forgets every unsynced write: a power loss. Returns what was lost and the inodes
    /// whose kernel caches must go.
    pub fn drop_unsynced(&mut self) -> (DropReport, Vec<u64>) {
        let mut report = DropReport::default();
        let mut inodes = Vec::new();
        for (ino, overlay) in self.overlays.drain() {
            let path = self
                .paths
                .get(&ino)
                .and_then(|p| p.strip_prefix(&self.root).ok())
                .map_or_else(|| format!("inode {ino}"), |p| p.display().to_string());
            report.bytes += overlay.unsynced_bytes();
            report.files.push((path, overlay.unsynced_bytes()));
            inodes.push(ino);
        }
        report
            .files
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        (report, inodes)
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// Our inode for the backing file at `path` with metadata `m`, made if new.
    fn inode_for(&mut self, path: &Path, m: &fs::Metadata) -> u64 {
        let key = (m.dev(), m.ino());
        let ino = match self.by_backing.get(&key) {
            Some(i) => *i,
            None => {
                let i = self.next_ino;
                self.next_ino += 1;
                self.by_backing.insert(key, i);
                i
            }
        };
        self.paths.insert(ino, path.to_path_buf());
        ino
    }

    fn attr(&self, ino: u64, m: &fs::Metadata) -> FileAttr {
        let size = self.overlays.get(&ino).map_or(m.size(), Overlay::size);
        let time = |secs: i64, nanos: i64| {
            if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
            } else {
                UNIX_EPOCH
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(&m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Looks `path` up in the backing directory: our inode and its attributes.
    fn entry(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(path).map_err(Errno::from)?;
        let ino = self.inode_for(path, &m);
        Ok(self.attr(ino, &m))
    }

    /// A file is gone from the backing directory: if that was its last name, its identity
    /// and unsynced data go too (see the module docs).
    fn forget_backing(&mut self, m: &fs::Metadata) {
        if m.nlink() <= 1
            && let Some(ino) = self.by_backing.remove(&(m.dev(), m.ino()))
        {
            self.overlays.remove(&ino);
        }
    }

    fn overlay(&mut self, ino: u64, file: &File) -> Result<&mut Overlay, Errno> {
        Ok(match self.overlays.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let len = file.metadata().map_err(Errno::from)?.len();
                v.insert(Overlay::new(len))
            }
        })
    }

    /// A backing file of `ino` to read or write through: an open handle's if there is
    /// one, else the file opened by path.
    fn file_of(&self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some((_, f)) = self.handles.values().find(|(i, _)| *i == ino) {
            return Ok(f.clone());
        }
        let path = self.path(INodeNo(ino))?;
        Ok(Arc::new(open_rw(&path).map_err(Errno::from)?))
    }

    fn new_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, Arc::new(file)));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.handles
            .get(&fh.0)
            .map(|(_, f)| f.clone())
            .ok_or(Errno::EBADF)
    }

    fn set_len(&mut self, ino: u64, file: &File, len: u64) -> Result<(), Errno> {
        self.overlay(ino, file)?.set_len(len);
        Ok(())
    }

    /// After a rename: every inode at or under `from` now lives under `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        for p in self.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }
}

fn kind(t: &fs::FileType) -> FileType {
    FileType::from_std(*t).unwrap_or(FileType::RegularFile)
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// The FUSE side; every operation takes the one lock (the daemon serves one request at a
/// time anyway, and backing I/O is fast next to the FUSE round trip).
pub struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    pub fn new(state: Arc<Mutex<State>>) -> Self {
        Self { state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-operation leaves the maps consistent enough to keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// unlink and rmdir: `remove` the backing entry, then forget what lazyfs held for it.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl Fn(&Path) -> io::Result<()>,
    ) {
        let mut s = self.lock();
        let result = s.child(parent, name).and_then(|p| {
            let m = fs::symlink_metadata(&p).map_err(Errno::from)?;
            remove(&p).map_err(Errno::from)?;
            s.forget_backing(&m);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

fn time_of(t: TimeOrNow) -> nix::sys::time::TimeSpec {
    let st = match t {
        TimeOrNow::SpecificTime(s) => s,
        TimeOrNow::Now => SystemTime::now(),
    };
    let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
    nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        match s.child(parent, name).and_then(|p| s.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.lock();
        // Through the handle when there is one: the file may have no name any more.
        let m = match fh.map(|fh| s.handle(fh)) {
            Some(Ok(f)) => f.metadata(),
            _ => match s.path(ino) {
                Ok(p) => fs::symlink_metadata(p),
                Err(e) => return reply.error(e),
            },
        };
        match m {
            Ok(m) => reply.attr(&TTL, &s.attr(ino.0, &m)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let result = (|| -> Result<FileAttr, Errno> {
            let path = s.path(ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(Errno::from)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(Errno::from)?;
            }
            if atime.is_some() || mtime.is_some() {
                let omit = nix::sys::time::TimeSpec::UTIME_OMIT;
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    &path,
                    &atime.map_or(omit, time_of),
                    &mtime.map_or(omit, time_of),
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| Errno::from_i32(e as i32))?;
            }
            if let Some(len) = size {
                let file = match fh {
                    Some(fh) => s.handle(fh)?,
                    None => s.file_of(ino.0)?,
                };
                s.set_len(ino.0, &file, len)?;
            }
            let m = match fh {
                Some(fh) => s.handle(fh)?.metadata(),
                None => fs::symlink_metadata(&path),
            }
            .map_err(Errno::from)?;
            Ok(s.attr(ino.0, &m))
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let result = s.child(parent, name).and_then(|p| {
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&p)
                .map_err(Errno::from)?;
            s.entry(&p)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // Plain rename only; RocksDB and rocketraft use nothing else.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut s = self.lock();
        let result = (|| -> Result<(), Errno> {
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            let replaced = fs::symlink_metadata(&to).ok();
            fs::rename(&from, &to).map_err(Errno::from)?;
            if let Some(m) = replaced {
                s.forget_backing(&m);
            }
            s.moved(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        let result = s
            .path(ino)
            .and_then(|p| open_rw(&p).map_err(Errno::from))
            .map(|f| s.new_handle(ino.0, f));
        match result {
            // No FOPEN_KEEP_CACHE: each open drops the kernel's cached pages of the file,
            // so pages read before a drop never outlive it.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let result = (|| -> Result<(FileAttr, u64), Errno> {
            let path = s.child(parent, name)?;
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            let file = opts.open(&path).map_err(Errno::from)?;
            let m = file.metadata().map_err(Errno::from)?;
            let ino = s.inode_for(&path, &m);
            if flags & libc::O_TRUNC != 0 {
                s.set_len(ino, &file, 0)?;
            }
            let attr = s.attr(ino, &m);
            Ok((attr, s.new_handle(ino, file)))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.lock();
        let result = s.handle(fh).and_then(|f| match s.overlays.get(&ino.0) {
            Some(o) => o.read(&f, offset, size as u64).map_err(Errno::from),
            None => {
                let mut buf = vec![0u8; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                buf.truncate(done);
                Ok(buf)
            }
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let result = s.handle(fh).and_then(|f| {
            s.overlay(ino.0, &f)?
                .write(&f, offset, data)
                .map_err(Errno::from)
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: the data stays unsynced.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let result = (|| -> Result<(), Errno> {
            if s.ignore_fsync {
                return Ok(());
            }
            let Some(overlay) = s.overlays.remove(&ino.0) else {
                return Ok(());
            };
            let file = s.handle(fh).or_else(|_| s.file_of(ino.0))?;
            let bytes = overlay.unsynced_bytes();
            overlay.sync(&file).map_err(Errno::from)?;
            s.synced_bytes += bytes;
            // The backing file itself is not fsynced: the power loss we simulate is ours,
            // and fsyncing the host's disk for every RocksDB sync would only slow runs.
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        let path = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let read = match fs::read_dir(&path) {
            Ok(r) => r,
            Err(e) => return reply.error(e.into()),
        };
        // Offsets are positions in this listing: ".", "..", then the entries in the
        // backing directory's order (stable while nobody changes the directory).
        let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for e in read.flatten() {
            let child = e.path();
            if let Ok(m) = fs::symlink_metadata(&child) {
                let child_ino = s.inode_for(&child, &m);
                entries.push((child_ino, kind(&m.file_type()), e.file_name()));
            }
        }
        for (i, (child_ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child_ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are never lazy here (see the module docs).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.lock().root.clone();
        match nix::sys::statvfs::statvfs(&root) {
            // The broker refuses writes below a free-space threshold: report the backing
            // disk's real numbers.
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                v.block_size() as u32,
                v.name_max() as u32,
                v.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let result = (|| -> Result<(), Errno> {
            match mode {
                // Preallocation that keeps the size (RocksDB's WAL and SST files) is a
                // performance hint: nothing the application can read changes.
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                // Extends the file with zeros, lazily like a truncate.
                0 => {
                    let file = s.handle(fh)?;
                    let end = offset.saturating_add(length);
                    let size = s.overlay(ino.0, &file)?.size();
                    if end > size {
                        s.set_len(ino.0, &file, end)?;
                    }
                    Ok(())
                }
                _ => Err(Errno::EOPNOTSUPP),
            }
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
