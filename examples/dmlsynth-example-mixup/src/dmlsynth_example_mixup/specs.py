"""The registry entries of the example plugin. Torch-free: dmlsynth's registry imports this module when it
loads (the Snakefile builds its DAG from it); the method's code is named by an import path and loaded only
by the runs that train it."""

from dmlsynth.registry import DatasetSpec, MethodSpec

METHOD = MethodSpec(
    name="example_mixup",
    module="dmlsynth_example_mixup.method:SameClassMixup",
    description="EXAMPLE plugin: convex mixes of two same-class embeddings, added to the batch",
    params_schema={
        "num_synthetic": {"type": "integer", "minimum": 0, "description": "mixes per real sample (0: off)"},
        "min_weight": {"type": "number", "minimum": 0, "maximum": 1, "description": "the real sample's weight w ~ U(min_weight, 1)"},
    },
    defaults={"num_synthetic": 1, "min_weight": 0.5},
    # With no mixes the method is exactly its control (dmlsynth check-method example_mixup checks it).
    off_params={"num_synthetic": 0},
)

# A folder of images, one sub-folder per class (examples/make_image_folder.py writes one); its folder is
# dataset_settings.example_shapes.root. The classes sorted by name: the first half train, the rest test.
DATASET = DatasetSpec(
    name="example_shapes",
    prepare="dmlsynth.data.image_folder:prepare",
    num_classes=6,
    train_classes=3,
    image_mode="L",
    default_backbone="small_cnn",
    default_embedding_dim=32,
    default_image_size=16,
    description="EXAMPLE plugin: six classes of 16x16 grayscale shapes made by examples/make_image_folder.py",
    default_generator="embedded",
)
