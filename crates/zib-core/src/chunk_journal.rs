//! The chunk journal: an append-only file beside a dataset's state file (`<dataset>.chunks`),
//! one JSON line per chunk of the pending backup stored since the state file was last written.
//!
//! Recording a chunk used to rewrite (and fsync) the whole state file with every chunk record
//! in it: the bytes written per chunk grew with the chunks already done, quadratic over a
//! backup (issue 11 #2). Appending one line keeps that cost constant. The state file is still
//! written whole at the other durable steps (it then lists every chunk so far, and the journal
//! is dropped), and at commit, which ends the pending backup; state files with chunk records
//! inside, from before the journal, load as they are.

use serde::{Deserialize, Serialize};

use crate::manifest::ChunkRecord;
use crate::names::SnapName;
use crate::state::{DatasetState, Pending};

/// One journal line: which backup and attempt the chunk belongs to, and where in its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub to: SnapName,
    pub attempt: u32,
    pub index: u64,
    pub chunk: ChunkRecord,
}

impl JournalEntry {
    /// The entry recording `chunk` as the next chunk of `p`.
    pub fn next_of(p: &Pending, chunk: ChunkRecord) -> Self {
        Self {
            seq: p.seq,
            to: p.to.clone(),
            attempt: p.attempt,
            index: p.chunks.len() as u64,
            chunk,
        }
    }

    /// The line as appended: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("journal entry serialises");
        v.push(b'\n');
        v
    }
}

impl DatasetState {
    /// Adds the journal's chunks to the pending backup: the entries of its current attempt
    /// that continue its recorded chunks, in order. Anything else is ignored: entries of an
    /// earlier attempt or another backup, entries the state file already holds (a crash after
    /// writing it, before dropping the journal), and a last line torn by a crash (its chunk
    /// counts as not recorded; the next run meets it with a HEAD, as after any crash between a
    /// PUT and its record). Returns how many chunks were added.
    pub fn fold_journal(&mut self, journal: &[u8]) -> usize {
        let Some(p) = self.pending.as_mut() else { return 0 };
        let mut added = 0;
        for line in journal.split(|&b| b == b'\n') {
            let Ok(e) = serde_json::from_slice::<JournalEntry>(line) else { continue };
            if e.seq == p.seq
                && e.to == p.to
                && e.attempt == p.attempt
                && e.index == p.chunks.len() as u64
            {
                p.chunks.push(e.chunk);
                added += 1;
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::DatasetName;

    fn chunk(i: u64) -> ChunkRecord {
        ChunkRecord::new(
            format!("zib/tank/photos@zib/000004-zib-20261126T030000Z/a00/{i:08}"),
            1048576,
            format!("{i}").repeat(64)[..64].to_owned(),
        )
    }

    #[test]
    fn an_old_state_file_and_its_journal_fold_into_the_pending_backup() {
        let ds = DatasetName::new("tank/photos").unwrap();
        // A state file from before the journal, with its one chunk record inside.
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let mut s = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        assert_eq!(s.pending.as_ref().unwrap().chunks.len(), 1);
        let journal = include_bytes!("../tests/fixtures/state-v1.chunks");
        assert_eq!(s.fold_journal(journal), 2);
        let p = s.pending.as_ref().unwrap();
        assert_eq!(p.chunks.len(), 3);
        assert_eq!(p.chunks[1..], [chunk(1), chunk(2)]);
        // Folding again adds nothing: every entry is now in the state.
        assert_eq!(s.fold_journal(journal), 0);
        // Without a pending backup (committed or abandoned since), the journal means nothing.
        s.pending = None;
        assert_eq!(s.fold_journal(journal), 0);
    }

    #[test]
    fn entries_continue_the_recorded_chunks_in_order() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let mut s = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        let p = s.pending.clone().unwrap();
        let e1 = JournalEntry::next_of(&p, chunk(1));
        assert_eq!(e1.index, 1);
        let mut later = p.clone();
        later.chunks.push(chunk(1));
        let e2 = JournalEntry::next_of(&later, chunk(2));
        // Out of order: entry 2 before entry 1 leaves only entry 1.
        let mut j = e2.to_line();
        j.extend(e1.to_line());
        assert_eq!(s.fold_journal(&j), 1);
        assert_eq!(s.pending.as_ref().unwrap().chunks.len(), 2);
    }
}
