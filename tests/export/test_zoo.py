"""The zoo (issue #35): one small instance of each model family from `train` to a served bundle, at 32x32.

Each family goes through `edgeskip compile --model ...` (one epoch on digits saved as 32x32 PNGs in an image folder,
ranking, the measured front, export, IREE for the host, verification), then the in-process runtime serves a test
image. The library's own classes are used throughout; widths are tiny where the family's factory takes one, else
the family's classes are assembled small (``zoo_small``). ``--blocks`` bounds the design space where a family gates
more than one block: one gate, two candidates, one compile of the host module (a search over more gates compiles
it again as candidates are added). bench/zoo_matrix.py runs the full-size list on CIFAR-10.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeskip.bench.images import load_images
from edgeskip.export.onnx_export import subgraphs
from edgeskip.manifest import load_manifest
from tests.conftest import inproc, shared

# (--model, --model-arg values, --blocks or None: every block the tracer finds)
ZOO = [
    ("tests.export.zoo_small:resnet_basic", [], None),  # torchvision resnet18/34
    ("tests.export.zoo_small:resnet_bottleneck", [], None),  # torchvision resnet50, resnext50_32x4d, wide_resnet50_2
    ("tests.export.zoo_small:regnet_y", [], None),  # torchvision regnet_x/y (with squeeze-excitation)
    ("tests.export.zoo_small:efficientnet", [], "features.3.1"),  # torchvision efficientnet_b0
    ("tests.export.zoo_small:convnext", [], "features.7.0"),  # torchvision convnext_tiny
    ("torchvision:mobilenet_v2", ["width_mult=0.25"], "features.9"),
    ("torchvision:mobilenet_v3_small", ["width_mult=0.25"], "features.11"),  # also _large
    # timm's ResNet class: resnet10t's BasicBlocks (resnet18's, with the tiered stem and the ceil-mode pool shortcut),
    # seresnext26d's grouped Bottlenecks with squeeze-excitation (resnet26d's, with the same 'd' pool shortcut)
    ("timm:resnet10t", ["channels=[16,32,64,128]", "stem_width=8"], None),
    (
        "timm:seresnext26d_32x4d",
        ["channels=[8,16,24,32]", "stem_width=8", "cardinality=2", "base_width=16"],
        "layer4.1",
    ),
    # timm's MobileNetV3 and EfficientNet share their block classes (InvertedResidual, DepthwiseSeparableConv,
    # SqueezeExcite, drop_path): one instance covers both; it compiles with a raised stack limit
    ("timm:mobilenetv3_small_050", [], "blocks.4.2"),
]
RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Multinomial"}


@pytest.fixture(scope="session")
def digits32(tmp_path_factory):
    """scikit-learn's digits as 32x32 RGB PNGs in an image folder (train: 30 per class, test: 15), as a user has them."""

    def build(d):
        from PIL import Image
        from sklearn.datasets import load_digits

        data = load_digits()
        for split, rows, per in (("train", range(0, 1200), 30), ("test", range(1200, 1797), 15)):
            count: dict[int, int] = {}
            for i in rows:
                y = int(data.target[i])
                if count.get(y, 0) < per:
                    count[y] = count.get(y, 0) + 1
                    (d / split / str(y)).mkdir(parents=True, exist_ok=True)
                    pixels = (data.images[i] * 255 / 16).astype(np.uint8)
                    image = Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB")
                    image.save(d / split / str(y) / f"{i}.png")

    return shared(tmp_path_factory, "digits32", build)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,args,blocks", ZOO, ids=[z[0].rpartition(":")[2] if "zoo_small" in z[0] else z[0] for z in ZOO]
)
def test_each_family_goes_from_train_to_a_served_bundle(digits32, tmp_path, spec, args, blocks):
    import onnx

    import edgeskip.runtime as es

    out = tmp_path / "bundle"
    res = inproc(
        "compile", "--model", spec, *[a for arg in args for a in ("--model-arg", arg)],
        *(["--blocks", blocks] if blocks else []),
        "--dataset", "imagefolder", "--data-dir", digits32, "--epochs", "1", "--target", "host", "--repeats", "2",
        "--static-data-tiling", "on", "--out", out, "--quiet", "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = load_manifest(out)
    assert m.model["model"] == spec and m.input.shape == ("N", 3, 32, 32) and m.num_gates >= 1
    if blocks:
        assert m.num_gates == len(blocks.split(","))
    v = m.extra["verification"]
    assert v["onnx"]["gated_vs_torch"] <= 1e-4 and v["onnx"]["static_vs_torch"] <= 1e-4
    assert v["iree"]["host"]["iree_vs_onnxruntime"] <= 1e-4, v["iree"]  # IREE built it, and it agrees
    # eval means eval: the model's own stochastic depth and dropout are not in any graph
    for graph in m.onnx.values():
        nodes = (n for g in subgraphs(onnx.load(str(out / graph), load_external_data=False).graph) for n in g.node)
        assert not {n.op_type for n in nodes} & RANDOM_OPS, graph
    # served in-process (the daemon's service): every config answers (its numbers are the verification's, above)
    images, _ = load_images(out / m.sample, m, 2)
    with es.open(out, backend="iree") as rt:
        for k in range(len(m.configs)):
            r = rt.infer(images, config=k)
            assert r.config == k and r.scores.shape == (2, 10) and np.isfinite(r.scores).all()
