"""The CUDA caching allocator's model (``CUDACachingAllocator.cpp`` as requests -> segments),
the allocator state history, and what-if replays of a recorded trace.
"""
