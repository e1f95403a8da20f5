"""The accelerator-level view: psum's accumulator formats and synthesized MACs in whole
arrays with a memory hierarchy, evaluated by ZigZag (``zigzag-dse``, KU Leuven).

:mod:`accel.workload` turns a network's conv/linear layers into ZigZag's workload,
:mod:`accel.engine` puts psum's MAC and partial-sum width into a reference architecture
(accel/architectures) and runs ZigZag layer by layer, :mod:`accel.run` does it for every
network and MAC of a study and writes the tables and plots (docs/accel.md).
"""
