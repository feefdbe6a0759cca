"""Reading untrusted snapshot files into columns: the bounded pickle VM, limits, the
metadata beside each file, the run layout and the columnar cache. Imports nothing above it.
"""
