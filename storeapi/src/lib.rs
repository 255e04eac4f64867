//! Shared data model (labels, matchers, samples) and the wire protocols (remote write, Thanos StoreAPI).
