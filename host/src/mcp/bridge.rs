//! stdio bridge (below)
