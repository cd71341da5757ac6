//! The chunk journal: an append-only file beside a dataset's state file (`<dataset>.chunks`),
//! one JSON line per chunk of the pending backup stored since the state file was last written.
//!
//! Recording a chunk used to rewrite (and fsync) the whole state file with every chunk record
//! in it: the bytes written per chunk grew with the chunks already done, quadratic over a
//! backup (issue 11 #2). Appending one line keeps that cost constant. The state file is still
//! written whole at the other durable steps (it then lists every chunk so far, and the journal
//! is dropped), and at commit, which ends the pending backup; state files with chunk records
//! inside, from before the journal, load as they are.
//!
//! With parallel PUTs, chunks are stored (and journaled) out of order: each line names its
//! chunk's index, and folding records it by index (`Pending::record`), so the journal says
//! which chunks are stored, not how many.

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
    /// The entry recording `chunk` as chunk `index` of `p`.
    pub fn at(p: &Pending, index: u64, chunk: ChunkRecord) -> Self {
        Self { seq: p.seq, to: p.to.clone(), attempt: p.attempt, index, chunk }
    }

    /// The line as appended: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("journal entry serialises");
        v.push(b'\n');
        v
    }
}

impl DatasetState {
    /// Adds the journal's chunks to the pending backup: the entries of its current attempt, by
    /// index (in any order: parallel PUTs finish out of order). Anything else is ignored:
    /// entries of an earlier attempt or another backup, entries the state file already holds
    /// (a crash after writing it, before dropping the journal), and a last line torn by a
    /// crash (its chunk counts as not recorded; the next run meets it with a 412 and a HEAD,
    /// as after any crash between a PUT and its record). Returns how many chunks were added.
    pub fn fold_journal(&mut self, journal: &[u8]) -> usize {
        let Some(p) = self.pending.as_mut() else { return 0 };
        let mut added = 0;
        for line in journal.split(|&b| b == b'\n') {
            let Ok(e) = serde_json::from_slice::<JournalEntry>(line) else { continue };
            if e.seq == p.seq
                && e.to == p.to
                && e.attempt == p.attempt
                && e.index < crate::manifest::MAX_CHUNKS
                && p.recorded(e.index).is_none()
            {
                p.record(e.index, e.chunk);
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
    fn entries_out_of_order_are_recorded_by_index() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let mut s = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        let p = s.pending.clone().unwrap();
        // Parallel PUTs: chunk 3 and then chunk 1 finished; chunk 2 is still on its way.
        let mut j = JournalEntry::at(&p, 3, chunk(3)).to_line();
        j.extend(JournalEntry::at(&p, 1, chunk(1)).to_line());
        assert_eq!(s.fold_journal(&j), 2);
        let got = s.pending.as_ref().unwrap();
        assert_eq!(got.chunks.len(), 2, "chunks 0 and 1 in order");
        assert_eq!(got.stored_ahead.keys().copied().collect::<Vec<_>>(), [3]);
        assert!(got.recorded(2).is_none(), "chunk 2 is not stored");
        // Chunk 2 lands (and a torn line after it): 0-3 in order, nothing ahead.
        let mut j = JournalEntry::at(&p, 2, chunk(2)).to_line();
        j.extend(&JournalEntry::at(&p, 4, chunk(4)).to_line()[..20]);
        assert_eq!(s.fold_journal(&j), 1);
        let got = s.pending.as_ref().unwrap();
        assert_eq!(got.chunks[1..], [chunk(1), chunk(2), chunk(3)]);
        assert!(got.stored_ahead.is_empty());
    }
}
