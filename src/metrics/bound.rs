//! Instruments bound to their attribute sets, for what is recorded once per call or per purge.
//! A bound recording goes straight to its series: no attribute hashing, no lock of the
//! instrument's series map, no comparison of attribute lists, which is most of what an
//! unbound recording costs.

use std::sync::OnceLock;

/// Bound instruments chosen by a small index (say, state x kind), each bound on first use.
pub(crate) struct BoundSet<B> {
    cells: Box<[OnceLock<B>]>,
}

impl<B> BoundSet<B> {
    pub fn new(len: usize) -> BoundSet<B> {
        BoundSet {
            cells: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The instrument at `index`, bound by `bind` the first time. An index past the end (a
    /// caller's bug) binds a fresh instrument each time rather than panicking.
    pub fn get(&self, index: usize, bind: impl FnOnce() -> B) -> BoundRef<'_, B> {
        match self.cells.get(index) {
            Some(cell) => BoundRef::Cached(cell.get_or_init(bind)),
            None => BoundRef::Fresh(bind()),
        }
    }
}

pub(crate) enum BoundRef<'a, B> {
    Cached(&'a B),
    Fresh(B),
}

impl<B> std::ops::Deref for BoundRef<'_, B> {
    type Target = B;

    fn deref(&self) -> &B {
        match self {
            BoundRef::Cached(b) => b,
            BoundRef::Fresh(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn binds_once_per_index_and_never_panics_past_the_end() {
        let set = BoundSet::<usize>::new(2);
        let binds = Cell::new(0);
        let bind = |v| {
            binds.set(binds.get() + 1);
            v
        };
        assert_eq!(*set.get(1, || bind(7)), 7);
        assert_eq!(*set.get(1, || bind(8)), 7, "bound on first use only");
        assert_eq!(*set.get(0, || bind(9)), 9);
        assert_eq!(*set.get(5, || bind(10)), 10);
        assert_eq!(binds.get(), 3);
    }
}
