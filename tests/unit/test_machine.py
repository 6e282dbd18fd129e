"""dmlsynth.machine: the machine facts recorded beside every benchmark's numbers."""

import os

from dmlsynth import machine


def test_load_description_says_whether_the_machine_was_shared():
    assert machine.describe_load(0.1, 2).startswith("machine idle")
    assert machine.describe_load(5.95, 2) == "machine shared (1-min load 5.95 at start)"


def test_facts_name_cpus_threads_torch_date_and_load():
    import torch

    facts = machine.machine_facts()
    assert facts["cpus"] == os.cpu_count()
    assert facts["torch"] == torch.__version__ and facts["torch_threads"] == torch.get_num_threads()
    line = machine.facts_line(facts)
    assert facts["date"] in line and f"{facts['cpus']} CPUs" in line and facts["load"] in line


def test_the_cpu_signature_names_the_model_and_the_vector_instructions_torch_uses():
    import torch

    signature = machine.cpu_signature()
    assert signature.endswith(f", {torch.backends.cpu.get_cpu_capability()}") and len(signature) > len(", AVX2")
    assert machine.machine_facts()["cpu"] == signature
