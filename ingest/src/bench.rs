//! pipeline bench (being written)
