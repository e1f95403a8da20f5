"""Running ZigZag (``zigzag-dse``) on psum's layers, architectures and MAC costs.

For one network, one architecture and one accumulator: every layer is mapped by ZigZag
(spatial mapping from the architecture's mapping file, temporal loops searched by its
LOMA engine for minimal energy) with the accumulator's bits as the partial sums'
precision (``O``) and psum's synthesized MAC as the array's unit energy and area. The
result per layer: energy by part (MAC; each memory level's accesses, by operand),
latency in cycles, and the partial-sum footprint at every memory level.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from accel.workload import Layer, zigzag_layer

__all__ = ["ARCHITECTURES", "Architecture", "LayerCost", "MacCost", "MappingError", "accelerator_yaml", "evaluate_layer",
           "register_port_bits"]

FOLDER = Path(__file__).resolve().parent / "architectures"
#: The reference architectures: name -> (accelerator file, mapping file) under accel/architectures.
ARCHITECTURES = {"os16": ("os16.yaml", "os16_mapping.yaml"), "ws16": ("ws16.yaml", "ws16_mapping.yaml"),
                 "tpu128": ("tpu128.yaml", "tpu128_mapping.yaml")}
#: The memory that stands for each PE's accumulator register (psum's MAC's own register).
PSUM_REGISTER = "psum_reg"


class MappingError(ValueError):
    """ZigZag could not map a layer on an architecture (one line, for the CLI)."""


@dataclass(frozen=True)
class MacCost:
    """One MAC unit as the array's processing element: its accumulator's bits, energy
    per MAC (pJ) and area (um^2), as psum synthesized and simulated it."""

    acc: str
    psum_bits: int
    energy_pj: float
    area_um2: float


@dataclass(frozen=True)
class Architecture:
    """A reference architecture: ZigZag's accelerator description (parsed YAML, with a
    32-bit partial-sum register psum rewrites per MAC) and its mapping file."""

    name: str
    accelerator: dict
    mapping: Path

    @classmethod
    def named(cls, name: str) -> Architecture:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
        acc_file, map_file = ARCHITECTURES[name]
        return cls(name, yaml.safe_load((FOLDER / acc_file).read_text()), FOLDER / map_file)


def accelerator_yaml(arch: Architecture, mac: MacCost, output_bits: int = 0) -> dict:
    """The architecture with psum's MAC in every PE: the array's unit energy and area
    are the MAC's, and each PE's partial-sum register holds one partial sum of the
    accumulator's bits (its accesses cost nothing here: they are the MAC's register,
    whose energy the MAC's already includes)."""
    acc = copy.deepcopy(arch.accelerator)
    acc["operational_array"]["unit_energy"] = float(mac.energy_pj)
    acc["operational_array"]["unit_area"] = float(mac.area_um2)
    reg = acc["memories"][PSUM_REGISTER]
    reg["size"] = mac.psum_bits
    for port in reg["ports"]:  # one whole partial sum (or finished output) per cycle
        port["bandwidth_min"] = port["bandwidth_max"] = register_port_bits(mac.psum_bits, output_bits)
    return acc


def register_port_bits(psum_bits: int, output_bits: int = 0) -> int:
    """The PE register's port width given to ZigZag: the wider of a partial sum and a
    finished output (which leaves the PE through it), rounded up to a power of two. The
    port moves one value a cycle either way and its accesses cost nothing (the MAC's own
    register), so this changes no energy; ZigZag 3.9.1's latency model fails an
    assertion on layers that fit the array whole when the port is narrower than the
    output, or 10 or 12 bits wide."""
    return 1 << (max(psum_bits, output_bits) - 1).bit_length()


@dataclass
class LayerCost:
    """ZigZag's evaluation of one layer: energy (pJ) of the MACs and of each memory
    level by operand (``memory[level][operand]``), cycles, and the partial sums each
    memory level holds at once (bits)."""

    layer: str
    macs: int
    mac_pj: float
    memory: dict[str, dict[str, float]]
    cycles: float
    psum_bits_held: dict[str, float] = field(default_factory=dict)

    @property
    def total_pj(self) -> float:
        return self.mac_pj + sum(sum(v.values()) for v in self.memory.values())


def _run_zigzag(workload: list[dict], accelerator: str, mapping: str, folder: Path):
    """ZigZag's pipeline of ``get_hardware_performance_zigzag`` (LOMA, minimal energy,
    uneven temporal mappings, 3 spatial mappings), without its saving and
    visualization stages: those write files psum does not read, and the visualization
    fails on a layer with no temporal loop (one that fits the array whole)."""
    from zigzag.mapping.temporal_mapping import TemporalMappingType
    from zigzag.stages.evaluation.cost_model_evaluation import CostModelStage
    from zigzag.stages.main import MainStage
    from zigzag.stages.mapping.spatial_mapping_generation import SpatialMappingGeneratorStage
    from zigzag.stages.mapping.temporal_mapping_generator_stage import TemporalMappingGeneratorStage
    from zigzag.stages.parser.accelerator_parser import AcceleratorParserStage
    from zigzag.stages.parser.workload_parser import WorkloadParserStage
    from zigzag.stages.results.reduce_stages import MinimalEnergyStage, SumStage
    from zigzag.stages.workload_iterator import WorkloadStage

    stages = [WorkloadParserStage, AcceleratorParserStage, SumStage, WorkloadStage, MinimalEnergyStage,
              SpatialMappingGeneratorStage, MinimalEnergyStage, TemporalMappingGeneratorStage, CostModelStage]
    return MainStage(list_of_callables=stages, accelerator=accelerator, workload=workload, mapping=mapping,
                     dump_folder=str(folder), pickle_filename=str(folder / "cmes.pickle"), loma_lpf_limit=6,
                     loma_show_progress_bar=False, nb_mappings_generated=3,
                     enable_mix_spatial_mapping_generation=False, access_same_data_considered_as_no_access=True,
                     temporal_mapping_type=TemporalMappingType("uneven")).run()


def evaluate_layer(layer: Layer, arch: Architecture, mac: MacCost, *, operand_bits: int, output_bits: int,
                   work: Path | None = None) -> LayerCost:
    """One layer on ``arch`` with ``mac`` in every PE, mapped by ZigZag for minimal energy."""
    logging.getLogger("zigzag").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="psum-accel-") as tmp:
        folder = Path(work or tmp)
        acc_file = folder / f"{arch.name}.yaml"
        acc_file.write_text(yaml.safe_dump(accelerator_yaml(arch, mac, output_bits), sort_keys=False))
        workload = [zigzag_layer(layer, 0, operand_bits=operand_bits, psum_bits=mac.psum_bits,
                                 output_bits=output_bits)]
        from zigzag.opt.loma.engine import NoValidLoopOrderingFoundException

        try:
            cmes = _run_zigzag(workload, str(acc_file), str(arch.mapping), folder)
        except (NoValidLoopOrderingFoundException, AssertionError) as exc:  # ZigZag's own failures
            text = str(exc).strip().splitlines()
            raise MappingError(f"ZigZag found no mapping of layer {layer.name} on {arch.name} with {mac.acc} "
                               f"({type(exc).__name__}: {text[0] if text else 'no message'})") from None
    cme = _first(cmes)
    memory: dict[str, dict[str, float]] = {}
    held: dict[str, float] = {}
    for op, per_level in cme.mem_energy_breakdown.items():
        levels = cme.mem_hierarchy_dict[cme.memory_operand_links.layer_to_mem_op(op)]
        for level, energy in zip(levels, per_level, strict=True):
            memory.setdefault(level.name, {})[str(op)] = float(energy)
        if str(op) == "O":
            held = _psums_held(cme, op, levels, mac.psum_bits)
    return LayerCost(layer.name, layer.macs, float(cme.mac_energy), memory, float(cme.latency_total2), held)


def _psums_held(cme, op, levels, psum_bits: int) -> dict[str, float]:
    """Bits of partial sums each memory level holds at once (all its instances
    together): the outputs its tile of the mapping holds, at the partial sums' bits, at
    the PEs' registers and at every level partial sums are read back from to be
    accumulated further; 0 where a level only ever holds finished outputs."""
    from zigzag.hardware.architecture.memory_port import DataDirection

    elements = cme.mapping.data_elem_per_level[op]
    held = {}
    for i, level in enumerate(levels):
        reread = cme.memory_word_access[op][i].get(DataDirection.RD_OUT_TO_LOW) > 0
        partial = level.name == PSUM_REGISTER or reread
        held[level.name] = float(elements[i + 1] * psum_bits) if partial and i + 1 < len(elements) else 0.0
    return held


def _first(cmes):
    """The layer's own cost-model evaluation in a single-layer run's results: ZigZag
    returns [(sum over layers, [(layer's evaluation, extra), ...])]."""
    _, per_layer = cmes[0]
    return per_layer[0][0]
