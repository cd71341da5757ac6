//! Whole trees of datasets. A `[[dataset]]` with `recursive = true` stands for its root and
//! every descendant filesystem and volume, each backed up as a dataset of its own (its own
//! chain, state lock, state file and key prefix `<prefix><name>@zib/`), exactly as if it had a
//! `[[dataset]]` of its own with the tree's settings. Never one `zfs send -R` stream: a child
//! created later simply joins at the next run (sanoid#2), and encrypted children with keys of
//! their own are each one raw send.
//!
//! Which entry governs a dataset is decided by nearness, so overlapping entries resolve the
//! same way whatever their order in the file:
//! - an entry naming the dataset itself wins: an explicit `[[dataset]]` for a descendant
//!   overrides the tree's settings for it, and is backed up even where a pattern of the tree
//!   would leave it out;
//! - otherwise the nearest recursive ancestor's entry: a tree inside a tree governs its own
//!   subtree, with its own settings and patterns.
//!
//! A descendant is left out when a pattern of its governing tree matches it or one of its
//! ancestors below that tree's root (leaving out `tank/docker/cache` leaves out what is inside
//! it too).
//!
//! [`expand`] is pure: the daemon lists the trees (`zfs list -r`) and knows the members it had
//! before (its jobs, the state files); the expansion says which concrete datasets exist, with
//! which settings, and which members are gone from the host. A gone member keeps its chains in
//! the bucket: nothing here or in the daemon deletes them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Config, DatasetConfig, DatasetName, names::MAX_NAME_LEN};

/// A glob pattern on full dataset names: `*` (any run of characters within one name
/// component), `?` (one such character), `**` (any run of characters, `/` included); every
/// other character stands for itself and must be one a dataset name may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExcludePattern(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(u8),
    One,
    Star,
    AnyDepth,
}

impl ExcludePattern {
    pub fn new(s: &str) -> Result<Self, String> {
        if s.len() > MAX_NAME_LEN {
            return Err(format!("invalid exclude pattern {s:?}: longer than {MAX_NAME_LEN} bytes"));
        }
        for comp in s.split('/') {
            if comp.is_empty() {
                return Err(format!(
                    "invalid exclude pattern {s:?}: empty name component (patterns match full dataset names such as \"tank/docker/cache*\")"
                ));
            }
            if let Some(c) = comp.chars().find(|c| {
                !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ' | '*' | '?'))
            }) {
                return Err(format!(
                    "invalid exclude pattern {s:?}: character {c:?} is not allowed (the characters of dataset names, and * ? **)"
                ));
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn tokens(&self) -> Vec<Token> {
        let b = self.0.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'*' if b.get(i + 1) == Some(&b'*') => {
                    out.push(Token::AnyDepth);
                    i += 1;
                }
                b'*' => out.push(Token::Star),
                b'?' => out.push(Token::One),
                c => out.push(Token::Literal(c)),
            }
            i += 1;
        }
        out
    }

    /// Whether the pattern matches all of `name` (linear in pattern x name: no backtracking).
    pub fn matches(&self, name: &str) -> bool {
        let s = name.as_bytes();
        let n = s.len();
        // next[j]: the tokens after the current one match s[j..].
        let mut next = vec![false; n + 1];
        next[n] = true;
        for t in self.tokens().into_iter().rev() {
            let mut cur = vec![false; n + 1];
            for j in (0..=n).rev() {
                cur[j] = match t {
                    Token::Literal(c) => j < n && s[j] == c && next[j + 1],
                    Token::One => j < n && s[j] != b'/' && next[j + 1],
                    Token::Star => next[j] || (j < n && s[j] != b'/' && cur[j + 1]),
                    Token::AnyDepth => next[j] || (j < n && cur[j + 1]),
                };
            }
            next = cur;
        }
        next[0]
    }
}

impl TryFrom<String> for ExcludePattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(&s)
    }
}
impl From<ExcludePattern> for String {
    fn from(p: ExcludePattern) -> String {
        p.0
    }
}

/// The checks of the tree keys that need the file's text (for the line): `exclude` only with
/// `recursive = true`, and each pattern below the entry's own root.
pub fn check_entries(datasets: &[DatasetConfig], text: &str) -> Result<(), String> {
    for ds in datasets {
        let Some(ex) = &ds.exclude else { continue };
        let at = crate::config::at_line(text, ex.span());
        if !ds.recursive {
            return Err(format!(
                "dataset {}: exclude{at} needs recursive = true (its patterns choose which descendants of a recursive entry are left out)",
                ds.name
            ));
        }
        let root = format!("{}/", ds.name);
        if let Some(p) = ex.get_ref().iter().find(|p| !p.as_str().starts_with(&root)) {
            return Err(format!(
                "dataset {}: exclude pattern {:?}{at} does not start with {root:?}: patterns match full names of datasets below the tree's root",
                ds.name,
                p.as_str()
            ));
        }
    }
    Ok(())
}

/// What `zfs list -r` showed of each tree root listed: the root (if it exists) and its
/// descendants. A root missing from the map was not listed (unknown: nothing is judged gone).
pub type Listings = BTreeMap<DatasetName, Vec<DatasetName>>;

/// The config's datasets made concrete.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// One entry per concrete dataset, none recursive: the explicit entries in the file's
    /// order, then the trees' members (gone ones included) by name.
    pub datasets: Vec<DatasetConfig>,
    /// Each member that only a tree brought in, and that tree's root.
    pub tree_of: BTreeMap<DatasetName, DatasetName>,
    /// Members known before (`known`) that the listing of their tree no longer shows.
    pub gone: BTreeSet<DatasetName>,
    /// Descendants a pattern left out.
    pub excluded: BTreeSet<DatasetName>,
    /// Descendants that cannot be backed up as configured, and why (their keys would be too
    /// long for S3).
    pub refused: Vec<String>,
}

impl Expansion {
    /// `cfg` with the concrete datasets.
    pub fn config(&self, cfg: &Config) -> Config {
        Config { datasets: self.datasets.clone(), ..cfg.clone() }
    }
}

fn parent(name: &str) -> Option<&str> {
    name.rsplit_once('/').map(|(p, _)| p)
}

/// Whether one listing of a tree's key prefix costs fewer requests than a listing of each
/// member's root: a LIST answers up to 1,000 keys, so the shared one costs ceil(keys / 1,000)
/// requests (at least one) against one a member. `keys_last` is what the last shared listing
/// had; never taken, it pays from two members.
pub fn one_listing_pays(members: usize, keys_last: Option<usize>) -> bool {
    match keys_last {
        None => members >= 2,
        Some(keys) => keys.div_ceil(1000).max(1) < members,
    }
}

/// The listing groups of a concrete config and its expansion: for each tree, the key prefix
/// its members' roots share ([`crate::KeyLayout::tree_prefix`]) and how many datasets of the
/// config have their root under it (the tree's root and members, and any other dataset whose
/// name starts with the root's).
pub fn listing_groups(cfg: &Config, x: &Expansion) -> Vec<(String, usize)> {
    let trees: BTreeSet<&DatasetName> = x.tree_of.values().collect();
    let roots: Vec<crate::KeyLayout> = cfg
        .datasets
        .iter()
        .map(|d| crate::KeyLayout::new(&cfg.resolve(d).prefix, &d.name))
        .collect();
    let mut prefixes: Vec<String> = trees
        .into_iter()
        .filter_map(|root| {
            // The prefix of the tree's members (they share their entry's settings).
            let member = cfg.datasets.iter().find(|d| x.tree_of.get(&d.name) == Some(root))?;
            Some(crate::KeyLayout::tree_prefix(&cfg.resolve(member).prefix, root))
        })
        .collect();
    // A tree inside another with the same prefix is in the outer one's listing.
    prefixes.sort();
    let mut groups: Vec<(String, usize)> = Vec::new();
    for p in prefixes {
        if groups.last().is_some_and(|(outer, _)| p.starts_with(outer.as_str())) {
            continue;
        }
        let members = roots.iter().filter(|l| l.root().starts_with(&p)).count();
        groups.push((p, members));
    }
    groups
}

/// The roots to list: the recursive entries not inside another recursive entry (a listing of
/// the outer root shows the inner tree too).
pub fn roots(cfg: &Config) -> Vec<DatasetName> {
    let rec: BTreeSet<&str> =
        cfg.datasets.iter().filter(|d| d.recursive).map(|d| d.name.as_str()).collect();
    rec.iter()
        .filter(|r| {
            let mut p = parent(r);
            while let Some(a) = p {
                if rec.contains(a) {
                    return false;
                }
                p = parent(a);
            }
            true
        })
        .map(|r| DatasetName::new(r).expect("a configured name"))
        .collect()
}

/// The root [`roots`] lists for `name` (a tree root or a dataset inside a tree), if any.
pub fn listed_root_of(cfg: &Config, name: &DatasetName) -> Option<DatasetName> {
    let roots = roots(cfg);
    let mut p = Some(name.as_str());
    while let Some(a) = p {
        if let Some(r) = roots.iter().find(|r| r.as_str() == a) {
            return Some(r.clone());
        }
        p = parent(a);
    }
    None
}

/// The concrete datasets of `cfg`, given the `listings` of its trees and the members `known`
/// from before (see the module docs for the rules). Linear in the names listed and known,
/// times the depth of the tree.
pub fn expand(cfg: &Config, listings: &Listings, known: &BTreeSet<DatasetName>) -> Expansion {
    let explicit: BTreeSet<&str> = cfg.datasets.iter().map(|d| d.name.as_str()).collect();
    let trees: BTreeMap<&str, &DatasetConfig> =
        cfg.datasets.iter().filter(|d| d.recursive).map(|d| (d.name.as_str(), d)).collect();
    let listed: BTreeSet<&DatasetName> = listings.values().flatten().collect();
    let mut out = Expansion {
        datasets: cfg
            .datasets
            .iter()
            .map(|d| DatasetConfig { recursive: false, exclude: None, ..d.clone() })
            .collect(),
        tree_of: BTreeMap::new(),
        gone: BTreeSet::new(),
        excluded: BTreeSet::new(),
        refused: Vec::new(),
    };
    let candidates: BTreeSet<&DatasetName> = listed.iter().copied().chain(known).collect();
    for name in candidates {
        if explicit.contains(name.as_str()) {
            continue;
        }
        // The nearest recursive ancestor, and whether a pattern of it matches the name or an
        // ancestor on the way up.
        let mut governing = None;
        let mut on_the_way = vec![name.as_str()];
        let mut p = parent(name.as_str());
        while let Some(a) = p {
            if let Some(t) = trees.get(a) {
                governing = Some(*t);
                break;
            }
            on_the_way.push(a);
            p = parent(a);
        }
        let Some(tree) = governing else { continue };
        let patterns = tree.exclude_patterns();
        if on_the_way.iter().any(|n| patterns.iter().any(|pat| pat.matches(n))) {
            out.excluded.insert(name.clone());
            continue;
        }
        let covered = {
            let mut p = Some(name.as_str());
            let mut found = false;
            while let Some(a) = p {
                if listings.keys().any(|r| r.as_str() == a) {
                    found = true;
                    break;
                }
                p = parent(a);
            }
            found
        };
        let gone = !listed.contains(name) && covered;
        let member =
            DatasetConfig { name: name.clone(), recursive: false, exclude: None, ..tree.clone() };
        if let Err(e) = cfg.check_key_length(&member) {
            out.refused.push(e);
            continue;
        }
        if gone {
            out.gone.insert(name.clone());
        }
        out.tree_of.insert(name.clone(), tree.name.clone());
        out.datasets.push(member);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> DatasetName {
        DatasetName::new(s).unwrap()
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/zib/zibd.toml")).map_err(|e| e.to_string())
    }

    const TARGET: &str = "[target]\nbucket = \"my-backups\"\n";

    fn entry(name: &str, schedule: &str, extra: &str) -> String {
        format!("\n[[dataset]]\nname = \"{name}\"\nschedule = \"{schedule}\"\n{extra}")
    }

    fn pat(s: &str) -> ExcludePattern {
        ExcludePattern::new(s).unwrap()
    }

    #[test]
    fn patterns_match_within_and_across_components() {
        assert!(pat("tank/docker/cache*").matches("tank/docker/cache"));
        assert!(pat("tank/docker/cache*").matches("tank/docker/cache-2"));
        assert!(!pat("tank/docker/cache*").matches("tank/docker/cache/x"));
        assert!(pat("tank/*/tmp").matches("tank/a/tmp"));
        assert!(!pat("tank/*/tmp").matches("tank/a/b/tmp"));
        assert!(pat("tank/**/tmp").matches("tank/a/b/tmp"));
        assert!(pat("tank/**").matches("tank/a/b"));
        assert!(pat("tank/v?").matches("tank/v1"));
        assert!(!pat("tank/v?").matches("tank/v12"));
        assert!(!pat("tank/a").matches("tank/ab"));
        for bad in ["", "tank//a", "tank/a@b", "tank/[ab]", "/tank"] {
            assert!(ExcludePattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exclude_needs_recursive_and_patterns_below_the_root_with_the_line() {
        let t = format!(
            "{TARGET}{}",
            entry("tank/docker", "@daily", "exclude = [\"tank/docker/cache*\"]\n")
        );
        let e = parse(&t).unwrap_err();
        assert!(
            e.contains("/etc/zib/zibd.toml")
                && e.contains("dataset tank/docker: exclude (line 7) needs recursive = true"),
            "{e}"
        );
        let t = format!(
            "{TARGET}{}",
            entry("tank/docker", "@daily", "recursive = true\nexclude = [\"docker/cache*\"]\n")
        );
        let e = parse(&t).unwrap_err();
        assert!(
            e.contains(
                "exclude pattern \"docker/cache*\" (line 8) does not start with \"tank/docker/\""
            ),
            "{e}"
        );
        let t = format!(
            "{TARGET}{}",
            entry("tank/docker", "@daily", "recursive = true\nexclude = [\"tank/docker/[x]\"]\n")
        );
        let e = parse(&t).unwrap_err();
        assert!(e.contains("line 8") && e.contains("invalid exclude pattern"), "{e}");
        let e = parse(&format!("{TARGET}{}", entry("tank/a", "@daily", "recursive = \"yes\"\n")))
            .unwrap_err();
        assert!(e.contains("line 7") && e.contains("recursive"), "{e}");
    }

    fn tree_config() -> Config {
        parse(&format!(
            "{TARGET}{}{}{}",
            entry(
                "tank/docker",
                "0 3 * * *",
                "recursive = true\nprefix = \"boxes\"\nexclude = [\"tank/docker/cache*\"]\n"
            ),
            entry("tank/docker/db", "0 * * * *", "storage_class = \"STANDARD\"\n"),
            entry("tank/docker/apps", "0 4 * * *", "recursive = true\n"),
        ))
        .unwrap()
    }

    fn listing(names: &[&str]) -> Vec<DatasetName> {
        names.iter().map(|s| n(s)).collect()
    }

    #[test]
    fn one_listing_pays_when_it_takes_fewer_requests_than_a_listing_a_member() {
        assert!(!one_listing_pays(1, None));
        assert!(one_listing_pays(2, None));
        assert!(one_listing_pays(500, Some(5_000)), "5 requests instead of 500");
        assert!(one_listing_pays(2, Some(0)));
        assert!(!one_listing_pays(5, Some(5_000)), "5 requests either way");
        assert!(!one_listing_pays(500, Some(750_000)));
    }

    #[test]
    fn listing_groups_are_the_trees_key_prefixes_with_their_datasets() {
        let cfg = tree_config();
        let listings = Listings::from([(
            n("tank/docker"),
            listing(&["tank/docker", "tank/docker/web", "tank/docker/web/data", "tank/docker/db"]),
        )]);
        let x = expand(&cfg, &listings, &BTreeSet::new());
        let concrete = Config { datasets: x.datasets.clone(), ..cfg.clone() };
        // tank/docker/db has an entry of its own (its own prefix: the target's), so it is not
        // under the tree's "boxes/" prefix.
        assert_eq!(listing_groups(&concrete, &x), [("boxes/tank/docker".to_owned(), 3)]);
    }

    #[test]
    fn a_tree_expands_into_its_members_with_the_nearest_entry_s_settings() {
        let cfg = tree_config();
        assert_eq!(roots(&cfg), [n("tank/docker")]);
        assert_eq!(listed_root_of(&cfg, &n("tank/docker/apps/x")), Some(n("tank/docker")));
        assert_eq!(listed_root_of(&cfg, &n("tank/other")), None);
        let listings = Listings::from([(
            n("tank/docker"),
            listing(&[
                "tank/docker",
                "tank/docker/web",
                "tank/docker/web/data",
                "tank/docker/cache",
                "tank/docker/cache/inner",
                "tank/docker/cachex",
                "tank/docker/db",
                "tank/docker/db/wal",
                "tank/docker/apps",
                "tank/docker/apps/cache1",
            ]),
        )]);
        let x = expand(&cfg, &listings, &BTreeSet::new());
        let got: Vec<(&str, &str)> =
            x.datasets.iter().map(|d| (d.name.as_str(), d.schedule.as_str())).collect();
        assert_eq!(
            got,
            [
                ("tank/docker", "0 3 * * *"),
                ("tank/docker/db", "0 * * * *"),
                ("tank/docker/apps", "0 4 * * *"),
                // the inner tree governs its subtree; its own patterns (none) apply
                ("tank/docker/apps/cache1", "0 4 * * *"),
                ("tank/docker/db/wal", "0 3 * * *"),
                ("tank/docker/web", "0 3 * * *"),
                ("tank/docker/web/data", "0 3 * * *"),
            ]
        );
        assert!(x.datasets.iter().all(|d| !d.recursive && d.exclude.is_none()));
        let web = x.datasets.iter().find(|d| d.name.as_str() == "tank/docker/web").unwrap();
        // Its own key prefix under the tree's: <prefix><name>@zib/.
        assert_eq!(cfg.resolve(web).prefix, "boxes/");
        assert_eq!(
            crate::KeyLayout::new(&cfg.resolve(web).prefix, &web.name).root(),
            "boxes/tank/docker/web@zib/"
        );
        assert_eq!(
            x.excluded,
            BTreeSet::from([
                n("tank/docker/cache"),
                n("tank/docker/cache/inner"),
                n("tank/docker/cachex")
            ])
        );
        assert_eq!(x.tree_of.get(&n("tank/docker/apps/cache1")), Some(&n("tank/docker/apps")));
        assert_eq!(x.tree_of.get(&n("tank/docker/db")), None, "explicit");
        assert!(x.gone.is_empty() && x.refused.is_empty());
        // An explicit entry is a concrete dataset even where a pattern would leave it out.
        let cfg2 = parse(&format!(
            "{TARGET}{}{}",
            entry("tank/docker", "@daily", "recursive = true\nexclude = [\"tank/docker/**\"]\n"),
            entry("tank/docker/keep", "@hourly", ""),
        ))
        .unwrap();
        let x = expand(
            &cfg2,
            &Listings::from([(n("tank/docker"), listing(&["tank/docker", "tank/docker/keep"]))]),
            &BTreeSet::new(),
        );
        assert_eq!(x.datasets.len(), 2);
        assert_eq!(x.excluded, BTreeSet::new());
    }

    #[test]
    fn members_known_before_and_no_longer_listed_are_gone_unless_the_listing_is_unknown() {
        let cfg = tree_config();
        let known = BTreeSet::from([
            n("tank/docker/old"),
            n("tank/docker/web"),
            n("tank/docker/cache"),
            n("tank/elsewhere"),
        ]);
        let listings =
            Listings::from([(n("tank/docker"), listing(&["tank/docker", "tank/docker/web"]))]);
        let x = expand(&cfg, &listings, &known);
        assert_eq!(x.gone, BTreeSet::from([n("tank/docker/old")]));
        assert!(x.datasets.iter().any(|d| d.name.as_str() == "tank/docker/old"), "kept as a job");
        assert!(!x.datasets.iter().any(|d| d.name.as_str() == "tank/elsewhere"), "no tree");
        assert!(x.excluded.contains(&n("tank/docker/cache")));
        // Without a listing nothing is judged gone.
        let x = expand(&cfg, &Listings::new(), &known);
        assert!(x.gone.is_empty());
        assert!(x.datasets.iter().any(|d| d.name.as_str() == "tank/docker/old"));
    }

    #[test]
    fn a_member_whose_keys_would_be_too_long_is_refused_by_name() {
        let cfg = parse(&format!(
            "{TARGET}prefix = \"{}\"\n{}",
            "p".repeat(760),
            entry("tank/t", "@daily", "recursive = true\n")
        ))
        .unwrap();
        let long = format!("tank/t/{}", "x".repeat(240));
        let x = expand(
            &cfg,
            &Listings::from([(n("tank/t"), listing(&["tank/t", "tank/t/short", &long]))]),
            &BTreeSet::new(),
        );
        assert_eq!(x.datasets.len(), 2);
        assert_eq!(x.refused.len(), 1);
        assert!(x.refused[0].contains(&long) && x.refused[0].contains("1024"), "{:?}", x.refused);
    }

    /// The pattern semantics written the obvious (exponential) way.
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| naive(rest, &s[i..])),
            [b'*', rest @ ..] => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| naive(rest, &s[i..])),
            [b'?', rest @ ..] => s.first().is_some_and(|&c| c != b'/') && naive(rest, &s[1..]),
            [c, rest @ ..] => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "c"]), 0..4)
            .prop_map(|comps| std::iter::once("p").chain(comps).collect::<Vec<_>>().join("/"))
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_naive_definition(
            pattern in "[ab*?/]{1,8}",
            name in "[ab/]{0,8}",
        ) {
            let p = ExcludePattern(pattern.clone());
            prop_assert_eq!(p.matches(&name), naive(pattern.as_bytes(), name.as_bytes()));
        }

        #[test]
        fn every_descendant_is_a_member_once_or_excluded_and_order_does_not_matter(
            names in prop::collection::btree_set(arb_name(), 1..16),
            patterns in prop::collection::vec(
                prop::sample::select(vec!["p/a*", "p/*/b", "p/**/c", "p/b?", "p/c"]), 0..3),
            inner in prop::option::of(arb_name()),
            explicit in prop::option::of(arb_name()),
            known in prop::collection::btree_set(arb_name(), 0..6),
            reverse in any::<bool>(),
        ) {
            let pats: Vec<String> = patterns.iter().map(|p| format!("\"{p}\"")).collect();
            let mut entries = vec![entry(
                "p",
                "0 3 * * *",
                &format!("recursive = true\nexclude = [{}]\n", pats.join(", ")),
            )];
            if let Some(i) = inner.as_ref().filter(|i| i.as_str() != "p") {
                entries.push(entry(i, "0 4 * * *", "recursive = true\n"));
            }
            if let Some(e) = explicit.as_ref().filter(|e| Some(*e) != inner.as_ref() && e.as_str() != "p") {
                entries.push(entry(e, "0 5 * * *", ""));
            }
            if reverse {
                entries.reverse();
            }
            let cfg = parse(&format!("{TARGET}{}", entries.concat())).unwrap();
            let mut listed: Vec<DatasetName> = names.iter().map(|s| n(s)).collect();
            if reverse {
                listed.reverse();
            }
            let known: BTreeSet<DatasetName> = known.iter().map(|s| n(s)).collect();
            let x = expand(&cfg, &Listings::from([(n("p"), listed.clone())]), &known);

            let members: Vec<&str> = x.datasets.iter().map(|d| d.name.as_str()).collect();
            let unique: BTreeSet<&str> = members.iter().copied().collect();
            prop_assert_eq!(unique.len(), members.len(), "a dataset twice: {:?}", members);
            let explicit_names: BTreeSet<&str> = cfg.datasets.iter().map(|d| d.name.as_str()).collect();
            let all: BTreeSet<String> =
                names.iter().cloned().chain(known.iter().map(|k| k.to_string())).collect();
            for name in all.iter().filter(|a| a.as_str() != "p") {
                let member = unique.contains(name.as_str());
                let excluded = x.excluded.contains(&n(name));
                prop_assert!(member != excluded, "{name}: member {member}, excluded {excluded}");
                if explicit_names.contains(name.as_str()) {
                    prop_assert!(member);
                    continue;
                }
                // The nearest recursive entry governs it; its patterns decide.
                let mut gov = None;
                let mut up = vec![name.as_str()];
                let mut p = parent(name);
                while let Some(a) = p {
                    if let Some(d) = cfg.datasets.iter().find(|d| d.recursive && d.name.as_str() == a) {
                        gov = Some(d);
                        break;
                    }
                    up.push(a);
                    p = parent(a);
                }
                let gov = gov.expect("everything is under p");
                let left_out = up.iter().any(|u| gov.exclude_patterns().iter().any(|q| naive(q.as_str().as_bytes(), u.as_bytes())));
                prop_assert_eq!(excluded, left_out, "{}", name);
                if member {
                    let d = x.datasets.iter().find(|d| d.name.as_str() == name).unwrap();
                    prop_assert_eq!(d.schedule.as_str(), gov.schedule.as_str());
                    prop_assert_eq!(x.gone.contains(&n(name)), !names.contains(name));
                }
            }
            prop_assert!(x.gone.iter().all(|g| known.contains(g) && !names.contains(g.as_str())));
            // The same whatever the order of the file and of the listing.
            let mut entries2 = entries.clone();
            entries2.reverse();
            let cfg2 = parse(&format!("{TARGET}{}", entries2.concat())).unwrap();
            listed.reverse();
            let y = expand(&cfg2, &Listings::from([(n("p"), listed)]), &known);
            let set = |e: &Expansion| -> BTreeSet<(String, String)> {
                e.datasets.iter().map(|d| (d.name.to_string(), d.schedule.as_str().to_owned())).collect()
            };
            prop_assert_eq!(set(&x), set(&y));
            prop_assert_eq!(&x.gone, &y.gone);
            prop_assert_eq!(&x.excluded, &y.excluded);
        }
    }
}
