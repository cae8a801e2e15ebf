//! Emptied state files of deleted process containers, kept for the next containers to
//! claim by rename instead of being unlinked.
//!
//! Why: on ext4 without a journal (this project's CI machines, many small VMs), the
//! kernel makes every new inode skip those freed in the last minute (six while their inode
//! table block is not yet written back), reading each
//! one's inode block to learn when it was freed. With one state file created and one
//! unlinked per container, every create scanned all the state files of the last minutes, on top of whatever else freed inodes nearby (with a build beside it, finding
//! a free inode was a sixth of the process runtime's CPU). A state file that is moved
//! aside, emptied and handed on frees nothing.
//!
//! The claim stays exclusive: a supervisor renames its spare onto the container's name
//! with `RENAME_NOREPLACE`, which fails as an exclusive create does when the name is
//! taken (invariant 2: two supervisors never both run one container). A spare someone
//! else took first, or none at all, falls back to the exclusive create.
//!
//! A file enters the pool only once nothing can write to it any more (its supervisor
//! recorded the exit, or is dead), and only empty: it is renamed to a dotted name that
//! no one hands out, truncated, then renamed to a plain one. Replicas sharing the folder
//! may hand out the same spare: one rename wins, the other supervisor creates afresh.
//!
//! Spares are kept per boot (`spare-states/<boot id>/`), and those of an earlier boot are
//! removed, never reused: after a power cut on a file system without a journal, a
//! spare's name may still point at the inode that became a container's state file, and
//! claiming it would write into that file. A controller killed without a power cut
//! leaves consistent names, which the next one on the same boot takes over.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Beyond this many, a deleted container's state file is unlinked as before: a burst of
/// thousands must not leave thousands of empty files behind.
const MOST_SPARES: usize = 256;

pub struct SpareStates {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
}

impl SpareStates {
    /// The pool under `root` for this boot, taking over the spares an earlier controller
    /// of this boot left there, and removing the rest: those of other boots, and those
    /// left half-emptied.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_string())
            .unwrap_or_default();
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if boot.is_empty() || entry.file_name().to_string_lossy() != boot.as_str() {
                remove_pool(&entry.path());
            }
        }
        // Without a boot id, no pool outlives its controller.
        let dir = root.join(if boot.is_empty() { "this-boot" } else { boot.as_str() });
        std::fs::create_dir_all(&dir)?;
        let mut free = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_file(&path);
            } else if entry.file_type()?.is_file() && free.len() < MOST_SPARES {
                free.push(path);
            }
        }
        Ok(SpareStates {
            dir,
            free: Mutex::new(free),
        })
    }

    /// A spare for the next supervisor to claim, if there is one. It is not ours any
    /// more: the supervisor renames it away, or leaves it for the next start-up to find.
    pub fn take(&self) -> Option<PathBuf> {
        self.free.lock().ok()?.pop()
    }

    /// Retires the state file of a container nothing writes to any more: into the pool,
    /// emptied, or unlinked when the pool is full. Gone from `state_file` either way.
    pub fn retire(&self, state_file: &Path) -> io::Result<()> {
        let full = self.free.lock().map(|free| free.len() >= MOST_SPARES).unwrap_or(true);
        if full {
            return unlink_if_there(state_file);
        }
        let name = format!("{:032x}", rand::random::<u128>());
        let emptying = self.dir.join(format!(".{name}"));
        match std::fs::rename(state_file, &emptying) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Another file system, say: the old way still removes it.
            Err(_) => return unlink_if_there(state_file),
        }
        let spare = self.dir.join(name);
        let emptied = std::fs::OpenOptions::new()
            .write(true)
            .open(&emptying)
            .and_then(|file| file.set_len(0))
            .and_then(|()| std::fs::rename(&emptying, &spare));
        match emptied {
            Ok(()) => {
                if let Ok(mut free) = self.free.lock() {
                    free.push(spare);
                }
                Ok(())
            }
            Err(_) => unlink_if_there(&emptying),
        }
    }
}

/// Removes an old pool file by file, never recursively: only what is plainly a spare
/// goes, and a folder someone made there stays.
fn remove_pool(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn unlink_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The supervisor's side: claims `state_file` for its container, with `spare` if it can.
/// `Ok(None)` when the name is taken (another supervisor has this container).
pub fn claim(state_file: &Path, spare: Option<&Path>) -> io::Result<Option<std::fs::File>> {
    if let Some(spare) = spare {
        match crate::fsutil::rename_noreplace(spare, state_file) {
            Ok(()) => return std::fs::OpenOptions::new().append(true).open(state_file).map(Some),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            // Taken by another replica's supervisor, or no RENAME_NOREPLACE here.
            Err(_) => {}
        }
    }
    match std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(state_file)
    {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_retired_state_file_comes_back_empty_as_the_next_claim_and_frees_no_inode() {
        let root = tempfile::tempdir().unwrap();
        let containers = root.path().join("containers");
        std::fs::create_dir_all(&containers).unwrap();
        let pool = SpareStates::open(root.path().join("spare-states")).unwrap();
        let first = containers.join("a-1.state");
        std::fs::write(&first, b"{\"claimed\":1}\n{\"exited\":0}\n").unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        pool.retire(&first).unwrap();
        assert!(!first.exists(), "the container is gone once its state file is");
        let spare = pool.take().expect("the retired file is a spare");
        let second = containers.join("b-1.state");
        let mut file = claim(&second, Some(&spare)).unwrap().expect("claimed");
        std::io::Write::write_all(&mut file, b"mine\n").unwrap();
        assert_eq!(
            std::fs::read(&second).unwrap(),
            b"mine\n",
            "nothing of the old container"
        );
        assert_eq!(
            std::fs::metadata(&second).unwrap().ino(),
            inode,
            "the same inode, reused"
        );
        assert!(!spare.exists());
    }

    #[test]
    fn a_claim_is_exclusive_with_or_without_a_spare() {
        let root = tempfile::tempdir().unwrap();
        let pool = SpareStates::open(root.path().join("spares")).unwrap();
        let state = root.path().join("c-1.state");
        assert!(claim(&state, None).unwrap().is_some());
        let taken = root.path().join("other.state");
        std::fs::write(&taken, b"").unwrap();
        pool.retire(&taken).unwrap();
        let spare = pool.take().unwrap();
        assert!(claim(&state, Some(&spare)).unwrap().is_none(), "the name is taken");
        assert!(spare.exists(), "a refused spare stays in the pool's folder");
        // A spare another supervisor took first: the claim creates afresh.
        let fresh = root.path().join("d-1.state");
        assert!(claim(&fresh, Some(&root.path().join("gone"))).unwrap().is_some());
        assert!(fresh.exists());
    }

    #[test]
    fn start_up_takes_over_this_boots_spares_and_removes_other_boots_and_half_emptied_ones() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("spares");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let (dir, earlier) = (root.join(boot.trim()), root.join("an-earlier-boot"));
        for dir in [&dir, &earlier] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("left"), b"").unwrap();
        }
        std::fs::write(dir.join(".half"), b"{\"exited\":0}\n").unwrap();
        let pool = SpareStates::open(root.clone()).unwrap();
        assert_eq!(pool.take(), Some(dir.join("left")), "this boot's spare is taken over");
        assert_eq!(pool.take(), None);
        assert!(!dir.join(".half").exists());
        assert!(
            !earlier.exists(),
            "another boot's spares may alias state files: removed"
        );
    }

    #[test]
    fn a_full_pool_unlinks() {
        let root = tempfile::tempdir().unwrap();
        let pool = SpareStates::open(root.path().join("spares")).unwrap();
        for i in 0..MOST_SPARES + 3 {
            let file = root.path().join(format!("{i}.state"));
            std::fs::write(&file, b"x").unwrap();
            pool.retire(&file).unwrap();
            assert!(!file.exists());
        }
        assert_eq!(std::fs::read_dir(&pool.dir).unwrap().count(), MOST_SPARES);
        assert!(
            pool.retire(&root.path().join("absent.state")).is_ok(),
            "already gone is fine"
        );
    }
}
