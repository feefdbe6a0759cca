"""MemoryViz's semantics as columns: which allocation is alive when, the timeline, its
downsampling, and the replay's cache.
"""
