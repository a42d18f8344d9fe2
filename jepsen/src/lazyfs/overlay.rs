//! One file's writes since its last fsync: what a power loss would take away.
//!
//! The backing file keeps what was synced; the overlay holds dirty pages and the file's
//! logical size on top of it. Reads merge the two, `sync` writes the overlay into the
//! backing file, and a power loss simply forgets the overlay.
//!
//! Size changes (truncate, extending writes, `fallocate` without `KEEP_SIZE`) are unsynced
//! data too: `floor` remembers the lowest size the file was truncated to since the last
//! sync, so backing bytes at or past it read as zeros until then (a shrink followed by a
//! re-extension must not bring old bytes back).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Granularity of dirty data. A write dirties whole pages (read-modify-write), which costs
/// memory, never correctness: the untouched bytes of a page are copies of the backing ones.
pub const PAGE: u64 = 4096;

#[derive(Debug)]
pub struct Overlay {
    /// Page index -> the page's current contents (PAGE bytes; bytes past `size` are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as the application sees it.
    size: u64,
    /// Backing bytes at or past this offset are gone (truncated), whatever the backing
    /// file still holds. Never above `size`.
    floor: u64,
    /// The backing file's length when the overlay began; the backing file does not change
    /// while the overlay exists (every write lands here).
    backing_len: u64,
    /// Bytes written or truncated away since the last sync, for the drop report.
    unsynced_bytes: u64,
}

impl Overlay {
    /// An empty overlay over a backing file of `backing_len` bytes.
    pub fn new(backing_len: u64) -> Self {
        Self {
            pages: BTreeMap::new(),
            size: backing_len,
            floor: backing_len,
            backing_len,
            unsynced_bytes: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes
    }

    /// The page `idx` as it reads now: the dirty copy, or the visible backing bytes.
    fn page(&self, backing: &File, idx: u64) -> io::Result<Box<[u8]>> {
        if let Some(p) = self.pages.get(&idx) {
            return Ok(p.clone());
        }
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = idx * PAGE;
        let visible_end = self.floor.min(self.backing_len).min(start + PAGE);
        if visible_end > start {
            read_full_at(backing, &mut page[..(visible_end - start) as usize], start)?;
        }
        Ok(page)
    }

    /// Up to `len` bytes at `offset`, short at the end of the file.
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let take = ((PAGE as usize) - in_page).min((end - pos) as usize);
            match self.pages.get(&idx) {
                Some(p) => out.extend_from_slice(&p[in_page..in_page + take]),
                None => {
                    let mut buf = vec![0u8; take];
                    let visible_end = self.floor.min(self.backing_len);
                    if pos < visible_end {
                        let n = ((visible_end - pos) as usize).min(take);
                        read_full_at(backing, &mut buf[..n], pos)?;
                    }
                    out.extend_from_slice(&buf);
                }
            }
            pos += take as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let take = ((PAGE as usize) - in_page).min(rest.len());
            let mut page = match self.pages.remove(&idx) {
                Some(p) => p,
                None => self.page(backing, idx)?,
            };
            page[in_page..in_page + take].copy_from_slice(&rest[..take]);
            self.pages.insert(idx, page);
            pos += take as u64;
            rest = &rest[take..];
        }
        self.size = self.size.max(pos);
        self.unsynced_bytes += data.len() as u64;
        Ok(())
    }

    /// Truncates or extends (with zeros) to `len`.
    pub fn set_len(&mut self, len: u64) {
        if len < self.size {
            self.unsynced_bytes += self.size - len;
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|idx, _| *idx < first_gone);
            // The page holding the new end keeps its head; its tail must read as zeros if
            // the file grows again.
            if !len.is_multiple_of(PAGE)
                && let Some(p) = self.pages.get_mut(&(len / PAGE))
            {
                p[(len % PAGE) as usize..].fill(0);
            }
            self.floor = self.floor.min(len);
        } else {
            self.unsynced_bytes += len - self.size;
        }
        self.size = len;
    }

    /// Makes the backing file what the application sees; the overlay is spent.
    pub fn sync(self, backing: &File) -> io::Result<()> {
        if self.floor < self.backing_len {
            backing.set_len(self.floor)?;
        }
        for (idx, page) in &self.pages {
            let start = idx * PAGE;
            let end = (start + PAGE).min(self.size);
            if end > start {
                backing.write_all_at(&page[..(end - start) as usize], start)?;
            }
        }
        backing.set_len(self.size)
    }
}

/// Reads exactly `buf.len()` bytes unless the file ends first; the rest stays zero (a file
/// that is shorter than its recorded length reads as if zero-filled, like a sparse file).
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> File {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(content, 0).unwrap();
        f
    }

    fn on_disk(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len();
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn writes_stay_in_the_overlay_until_sync() {
        let f = backing(b"hello world");
        let mut o = Overlay::new(11);
        o.write(&f, 6, b"WORLD and more").unwrap();
        assert_eq!(o.read(&f, 0, 100).unwrap(), b"hello WORLD and more");
        assert_eq!(o.size(), 20);
        // Nothing reached the backing file: a power loss here loses the write.
        assert_eq!(on_disk(&f), b"hello world");
        o.sync(&f).unwrap();
        assert_eq!(on_disk(&f), b"hello WORLD and more");
    }

    #[test]
    fn writes_across_pages_and_holes_read_back() {
        let f = backing(&[]);
        let mut o = Overlay::new(0);
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        o.write(&f, 3000, &big).unwrap();
        let all = o.read(&f, 0, 20_000).unwrap();
        assert_eq!(all.len(), 13_000);
        assert!(all[..3000].iter().all(|b| *b == 0));
        assert_eq!(&all[3000..], &big[..]);
        // A read in the middle of a page and across a page boundary.
        assert_eq!(o.read(&f, 4090, 10).unwrap(), &big[1090..1100]);
        o.sync(&f).unwrap();
        assert_eq!(on_disk(&f), all);
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_bytes() {
        let old = vec![7u8; 10_000];
        let f = backing(&old);
        let mut o = Overlay::new(10_000);
        o.set_len(100);
        o.write(&f, 5000, b"x").unwrap();
        let now = o.read(&f, 0, 10_000).unwrap();
        assert_eq!(now.len(), 5001);
        assert!(now[..100].iter().all(|b| *b == 7));
        assert!(
            now[100..5000].iter().all(|b| *b == 0),
            "old bytes came back"
        );
        assert_eq!(now[5000], b'x');
        assert_eq!(
            on_disk(&f),
            old,
            "the truncate must not reach the disk before sync"
        );
        o.sync(&f).unwrap();
        assert_eq!(on_disk(&f), now);
    }

    #[test]
    fn truncate_inside_a_dirty_page_zeroes_its_tail() {
        let f = backing(&[]);
        let mut o = Overlay::new(0);
        o.write(&f, 0, &[1u8; 100]).unwrap();
        o.set_len(10);
        o.set_len(50);
        let now = o.read(&f, 0, 100).unwrap();
        assert_eq!(now.len(), 50);
        assert!(now[..10].iter().all(|b| *b == 1));
        assert!(now[10..].iter().all(|b| *b == 0));
        o.sync(&f).unwrap();
        assert_eq!(on_disk(&f), now);
    }

    #[test]
    fn forgetting_the_overlay_is_a_power_loss() {
        let f = backing(b"synced");
        let mut o = Overlay::new(6);
        o.write(&f, 6, b" and not synced").unwrap();
        o.set_len(3);
        assert_eq!(o.unsynced_bytes(), 15 + 18);
        drop(o);
        assert_eq!(on_disk(&f), b"synced");
    }
}
