"""Convert official PyTorch LSNet checkpoints to lsnet_jax weights, and back.

    lsnet-convert lsnet_t.pth weights/lsnet_t --check
    lsnet-convert checkpoint.pth weights/lsnet_t_ema --ema        # training checkpoint's EMA
    lsnet-convert --to-torch weights/lsnet_t lsnet_t_from_jax.pth  # JAX -> official layout

(``python convert_torch.py ...`` at the repository's root is the same command.)

The variant, its distillation head, the number of classes and the input size are read from the
keys and shapes (or given with --model). MMSegmentation checkpoints of the LSNet Semantic FPN
segmenters (``{'meta', 'state_dict': {backbone.*, neck.*, decode_head.*}}``, e.g.
``lsnet_t_semfpn.pth``) are recognised by their keys and converted to ``lsnet_{t,s,b}_semfpn``,
MMDetection RetinaNet checkpoints (``{backbone.*, neck.*, bbox_head.*}``, ``lsnet_t_retinanet.pth``)
to ``lsnet_{t,s,b}_retinanet`` (``--check`` compares raw outputs and detections with the PyTorch
reference detector), MMDetection Mask R-CNN checkpoints (``{backbone.*, neck.*, rpn_head.*,
roi_head.*}``, ``lsnet_t_maskrcnn.pth``) to ``lsnet_{t,s,b}_maskrcnn`` (``--check`` compares the RPN's
raw outputs and both RoI heads on given boxes);
timm / DeiT RegNet checkpoints (DeiT's distillation teacher ``regnety_160-a5fe301d.pth``, timm's
``regnety_160.deit_in1k``) to ``regnet{x,y}_*`` (``--check`` compares with timm's own model: the
test extra). Writes OUT/orbax, OUT/model.safetensors and
OUT/config.json; ``lsnet_jax.create_model(name, pretrained=OUT)`` loads them. ``--check`` rebuilds
the model in PyTorch (lsnet_jax.torch_reference) from the same checkpoint and prints the largest
logit difference on random inputs. A .pth is read without torch (``lsnet_jax.checkpoints.pth``:
tensors and plain containers only); ``--check``, ``--trust-pickle`` and ``--to-torch`` to a .pth
need the ``[torch]`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lsnet_jax.cli.args import positive_int


def to_jax(args: argparse.Namespace) -> None:
    from lsnet_jax.checkpoints.torch_io import read_checkpoint
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.data.coco import COCO_CLASSES
    from lsnet_jax.data.segmentation import ADE20K_CLASSES
    from lsnet_jax.models.conversion import from_official

    sd = read_checkpoint(Path(args.ckpt), args.ema, args.trust_pickle)
    # every key and shape has been checked against the model, both ways
    flat, meta = from_official(sd, args.model, args.img_size, what=args.ckpt)
    name, num_classes = meta["model"], meta["num_classes"]
    meta |= dict(source=str(Path(args.ckpt).name), ema=bool(args.ema))
    if meta.get("task") == "segmentation" and num_classes == len(ADE20K_CLASSES):
        meta["class_names"] = list(ADE20K_CLASSES)
    if meta.get("task") == "detection" and num_classes == len(COCO_CLASSES):
        meta["class_names"] = list(COCO_CLASSES)
    out = save_weights(args.out, flat, meta, overwrite=args.overwrite, inputs=[args.ckpt])
    if meta.get("task") == "detection" and name.endswith("_maskrcnn"):
        print(f"{args.ckpt}: {name} (Mask R-CNN), {num_classes} classes -> {out}")
        if args.check:
            check_maskrcnn(sd, name, num_classes, out)
    elif meta.get("task") == "detection":
        print(f"{args.ckpt}: {name} (RetinaNet), {num_classes} classes -> {out}")
        if args.check:
            check_detector(sd, name, num_classes, out)
    elif meta.get("task") == "segmentation":
        print(f"{args.ckpt}: {name} (Semantic FPN), {num_classes} classes -> {out}")
        if args.check:
            check_segmenter(sd, name, num_classes, out)
    elif name.startswith("regnet"):
        print(f"{args.ckpt}: {name} (RegNet), {num_classes} classes -> {out}")
        if args.check:
            check_regnet(sd, name, num_classes, out)
    else:
        print(f"{args.ckpt}: {name}, {num_classes} classes, {meta['img_size']}px -> {out}")
        if args.check:
            check(sd, name, num_classes, meta["img_size"], out)


def check_regnet(sd: dict[str, np.ndarray], name: str, num_classes: int, out: Path, batch: int = 2,
                 size: int = 224, seed: int = 0) -> dict[str, float]:
    """Largest |logit difference| between timm's own RegNet and the converted one."""
    import jax.numpy as jnp
    import torch

    from lsnet_jax.models.registry import compiled, create_model
    from lsnet_jax.testing import diverse_images
    from lsnet_jax.torch_reference import import_timm

    try:
        timm = import_timm()
    except ImportError as e:
        raise ValueError(f"--check of a RegNet compares with timm's model: pip install -e '.[torch,test]' ({e})")
    tm = timm.create_model(name, num_classes=num_classes).eval()
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = diverse_images(batch, size, seed)
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy()
    res = {}
    for deploy in (False, True):
        jm = create_model(name, pretrained=out, deploy=deploy)
        res["folded" if deploy else "unfolded"] = float(np.abs(np.asarray(compiled(jm)(jnp.asarray(x.transpose(0, 2, 3, 1)))) - ref).max())
    scale = float(ref.std())
    print(f"check against timm {timm.__version__} on {batch} random images (seed {seed}): logit std {scale:.4g}; "
          f"largest |JAX - timm| {res['unfolded']:.3g} ({res['unfolded'] / scale:.2g} std), folded "
          f"{res['folded']:.3g} ({res['folded'] / scale:.2g} std)")
    return res


def check_segmenter(sd: dict[str, np.ndarray], name: str, num_classes: int, out: Path,
                    size: tuple[int, int] = (512, 640), seed: int = 0) -> dict[str, float]:
    """Largest |logit difference| between the PyTorch reference segmenter and the converted one,
    on one random ``size`` image (the 1/8 logits, before any resize)."""
    import jax.numpy as jnp
    import torch

    from lsnet_jax.models.registry import compiled, create_model
    from lsnet_jax.testing import diverse_images
    from lsnet_jax.torch_reference import create_torch_segmenter

    tm = create_torch_segmenter(name, num_classes)
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = diverse_images(1, size[0], seed, width=size[1])
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    res = {}
    for deploy in (False, True):
        jm = create_model(name, pretrained=out, deploy=deploy)
        res["folded" if deploy else "unfolded"] = float(np.abs(np.asarray(compiled(jm)(xj)) - ref).max())
    scale = float(ref.std())
    print(f"check on a {size[0]}x{size[1]} random image (seed {seed}): logit std {scale:.4g}; largest "
          f"|JAX - PyTorch| {res['unfolded']:.3g} ({res['unfolded'] / scale:.2g} std), folded "
          f"{res['folded']:.3g} ({res['folded'] / scale:.2g} std)")
    return res


def check_detector(sd: dict[str, np.ndarray], name: str, num_classes: int, out: Path,
                   size: tuple[int, int] = (384, 512), seed: int = 0) -> dict[str, float]:
    """The PyTorch reference detector against the converted one on one random ``size`` image: the
    largest raw-output difference (every level's class logits and deltas) in units of each
    output's std, folded and not, and the detections of both post-processings compared."""
    import jax.numpy as jnp
    import torch

    import jax

    from lsnet_jax.inference.detection import detect
    from lsnet_jax.models.registry import compiled, create_model
    from lsnet_jax.testing import diverse_images
    from lsnet_jax.torch_reference import create_torch_retinanet, retina_postprocess

    tm = create_torch_retinanet(name, num_classes)
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = diverse_images(1, size[0], seed, width=size[1])
    with torch.inference_mode():
        ref_cls, ref_reg = tm(torch.from_numpy(x))
        ref_det = retina_postprocess(ref_cls, ref_reg, size, (1.0, 1.0, 1.0, 1.0))
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    res = {}
    for deploy in (False, True):
        jm = create_model(name, pretrained=out, deploy=deploy)
        cls, reg = compiled(jm)(xj)
        err = 0.0
        for ours, ref in zip((*cls, *reg), (*ref_cls, *ref_reg)):
            ref = ref.numpy().transpose(0, 2, 3, 1)
            err = max(err, float(np.abs(np.asarray(ours) - ref).max() / ref.std()))
        res["folded" if deploy else "unfolded"] = err
    dets = jax.jit(detect)(jm, xj, jnp.asarray([size], jnp.float32), jnp.ones((1, 4), jnp.float32)).to_lists()[0]
    ref_boxes = ref_det[0].numpy()
    same = sum(bool(np.any((np.abs(ref_boxes - b).max(-1) < 0.05) & (ref_det[2].numpy() == lab)))
               for b, lab in zip(dets["boxes"], dets["labels"]))
    res["detections"], res["matched"] = len(ref_boxes), same
    print(f"check on a {size[0]}x{size[1]} random image (seed {seed}): largest |JAX - PyTorch| of the raw outputs "
          f"{res['unfolded']:.2g} of their std, folded {res['folded']:.2g}; detections: reference {len(ref_boxes)}, "
          f"JAX {len(dets['boxes'])}, {same} with the same label and box (0.05 px)")
    return res


def check_maskrcnn(sd: dict[str, np.ndarray], name: str, num_classes: int, out: Path,
                   size: tuple[int, int] = (384, 512), rois: int = 64, seed: int = 0) -> dict[str, float]:
    """The PyTorch reference Mask R-CNN against the converted one on one random ``size`` image: the
    largest difference, in units of each output's std, of the RPN's raw outputs per level (folded
    and not), of the box head's class logits and deltas and of the mask head's logits on ``rois``
    given random boxes (every RoI level)."""
    import jax.numpy as jnp
    import torch

    from lsnet_jax.models.registry import create_model
    from lsnet_jax.testing import diverse_images, random_boxes
    from lsnet_jax.torch_reference import create_torch_maskrcnn

    tm = create_torch_maskrcnn(name, num_classes)
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = diverse_images(1, size[0], seed, width=size[1])
    boxes = random_boxes(rois, *size, seed=seed)
    troi = torch.cat([torch.zeros(rois, 1), torch.from_numpy(boxes)], 1)
    with torch.inference_mode():
        ref_cls, ref_reg, feats = tm(torch.from_numpy(x))
        ref_heads = (*tm.bbox_forward(feats, troi), tm.mask_forward(feats, troi))
    xj, bj = jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(boxes[None])

    def err(ours, theirs, nchw=True):
        theirs = theirs.numpy()
        theirs = theirs.transpose(0, 2, 3, 1) if nchw else theirs
        return float(np.abs(np.asarray(ours).reshape(theirs.shape) - theirs).max() / theirs.std())

    res = {}
    for deploy in (False, True):
        jm = create_model(name, pretrained=out, deploy=deploy)
        cls, reg, heads = _maskrcnn_outputs(jm, xj, bj)
        res["folded" if deploy else "unfolded"] = max(err(o, t) for o, t in zip((*cls, *reg), (*ref_cls, *ref_reg)))
        if not deploy:
            res["bbox_head"] = max(err(heads[0][0], ref_heads[0], False), err(heads[1][0], ref_heads[1], False))
            res["mask_head"] = err(heads[2][0], ref_heads[2])
    print(f"check on a {size[0]}x{size[1]} random image (seed {seed}): largest |JAX - PyTorch| of the RPN outputs "
          f"{res['unfolded']:.2g} of their std, folded {res['folded']:.2g}; on {rois} given RoIs: box head "
          f"{res['bbox_head']:.2g}, mask head {res['mask_head']:.2g}")
    return res


def _maskrcnn_outputs(model, x, boxes):
    """One compiled call: the RPN outputs and the box and mask heads on ``boxes``."""
    import jax
    from flax import nnx

    graph, state = nnx.split(model)

    @jax.jit
    def run(state, x, boxes):
        m = nnx.merge(graph, state)
        feats = m.features(x)
        cls, reg = m.rpn(feats)
        return cls, reg, (*m.bbox_forward(feats, boxes), m.mask_forward(feats, boxes))

    return run(state, x, boxes)


def check(sd: dict[str, np.ndarray], name: str, num_classes: int, img_size: int, out: Path,
          batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Largest |logit difference| between the PyTorch reference and the converted JAX model."""
    import jax.numpy as jnp
    import torch

    from lsnet_jax.models.registry import compiled, create_model
    from lsnet_jax.testing import diverse_images
    from lsnet_jax.torch_reference import create_torch_model

    tm = create_torch_model(name, num_classes, img_size)
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = diverse_images(batch, img_size, seed)
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy()
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    res = {}
    for deploy in (False, True):
        jm = create_model(name, pretrained=out, img_size=img_size, deploy=deploy)
        got = np.asarray(compiled(jm)(xj))
        res["folded" if deploy else "unfolded"] = float(np.abs(got - ref).max())
    scale = float(ref.std())
    print(f"check on {batch} random images (seed {seed}): logit std {scale:.4g}; largest |JAX - PyTorch| "
          f"{res['unfolded']:.3g} ({res['unfolded'] / scale:.2g} std), folded {res['folded']:.3g} "
          f"({res['folded'] / scale:.2g} std)")
    return res


def to_torch(args: argparse.Namespace) -> None:
    from lsnet_jax.checkpoints.torch_io import write_state_dict
    from lsnet_jax.checkpoints.weights import load_weights
    from lsnet_jax.models import semfpn_official
    from lsnet_jax.models.lsnet_official import jax_to_torch

    flat, meta = load_weights(args.ckpt)
    if str(meta.get("model", "")).startswith("regnet") or any(p[:2] == ("stem", "c") for p in flat):
        from lsnet_jax.models import regnet_official

        out = write_state_dict(regnet_official.jax_to_torch(flat), args.out, wrap="model", overwrite=args.overwrite,
                               inputs=[args.ckpt])
        print(f"{args.ckpt} ({meta.get('model', 'RegNet')}) -> {out} (timm / DeiT layout)")
        return
    mm = None  # (layout module, the dataset's class names, the family's name, the layout's name)
    if str(meta.get("model", "")).endswith("_maskrcnn") or any(p[0] == "roi_head" for p in flat):
        from lsnet_jax.data.coco import COCO_CLASSES
        from lsnet_jax.models import maskrcnn_official

        mm = (maskrcnn_official, COCO_CLASSES, "LSNet Mask R-CNN", "MMDetection")
    elif meta.get("task") == "detection" or any(p[0] == "bbox_head" for p in flat):
        from lsnet_jax.data.coco import COCO_CLASSES
        from lsnet_jax.models import retinanet_official

        mm = (retinanet_official, COCO_CLASSES, "LSNet RetinaNet", "MMDetection")
    elif meta.get("task") == "segmentation" or any(p[0] == "decode_head" for p in flat):
        from lsnet_jax.data.segmentation import ADE20K_CLASSES

        mm = (semfpn_official, ADE20K_CLASSES, "LSNet Semantic FPN", "MMSegmentation")
    if mm is not None:
        layout, known, family, where = mm
        classes = meta.get("class_names") or (list(known) if meta.get("num_classes") == len(known) else None)
        out = write_state_dict(layout.jax_to_torch(flat), args.out, wrap="state_dict",
                               meta={"CLASSES": tuple(classes)} if classes else {}, overwrite=args.overwrite,
                               inputs=[args.ckpt])
        print(f"{args.ckpt} ({meta.get('model', family)}) -> {out} ({where} layout)")
        return
    out = write_state_dict(jax_to_torch(flat), args.out, overwrite=args.overwrite, inputs=[args.ckpt])
    print(f"{args.ckpt} ({meta.get('model', 'LSNet')}) -> {out} (official state-dict layout)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsnet-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="official checkpoint (.pth/.safetensors); with --to-torch, JAX weights")
    p.add_argument("out", help="output weights directory; with --to-torch, a .pth or .safetensors file")
    p.add_argument("--model", help="variant name (default: detected from the keys)")
    p.add_argument("--img-size", type=positive_int, default=224, help="input size, with --model (classifiers)")
    p.add_argument("--ema", action="store_true", help="convert the 'model_ema' weights of a training checkpoint")
    p.add_argument("--check", action="store_true", help="compare logits with the PyTorch reference")
    p.add_argument("--to-torch", action="store_true", help="JAX weights -> official PyTorch state dict")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (by default an existing file or non-empty directory is refused)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow arbitrary pickled objects in the .pth (only for files you trust)")
    args = p.parse_args(argv)
    from lsnet_jax.checkpoints.weights import check_output

    try:
        check_output(args.out, args.overwrite, inputs=[args.ckpt])  # before the checkpoint is read
        (to_torch if args.to_torch else to_jax)(args)
    except (ValueError, FileNotFoundError) as e:  # bad arguments or data; the message names the file
        msg = str(e)
        print(f"error: {msg if args.ckpt in msg or args.out in msg else f'{args.ckpt}: {msg}'}", file=sys.stderr)
        return 2
    except OSError as e:  # writing failed (disk full, permissions); nothing is left half-written
        print(f"error: writing {args.out} failed: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
