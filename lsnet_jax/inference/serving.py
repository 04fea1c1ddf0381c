"""Serving export, with the weights inside, for runtimes without this package or PyTorch.

- serialized StableHLO (``jax.export``): runs wherever JAX or another StableHLO runtime does,
  ``jax.export.deserialize(open(f, 'rb').read()).call(images)``;
- a TensorFlow SavedModel and a TFLite flatbuffer, through ``jax2tf`` (JAX's maintained converter,
  which embeds the same StableHLO) and TensorFlow's TFLite converter. These need TensorFlow: the
  ``[tf]`` extra.
- an ONNX graph run by ONNX Runtime (the ``[onnx]`` extra): LSNet classifiers and segmenters
  written directly as the NCHW graph ORT runs best (``lsnet_jax.inference.onnx_graph``), other
  models through ``jax2onnx``, which converts JAX's primitives to ONNX operators (jax2tf + tf2onnx
  cannot: tf2onnx does not convert the XlaCallModule op that embeds StableHLO); int8 through ONNX
  Runtime's quantization (``quantize_onnx``).

Inputs are float32 NHWC images normalised as the model expects; outputs float32 logits. The batch
dimension is symbolic unless a batch size is given, so one file serves every batch size.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from lsnet_jax.checkpoints.weights import publish, remove_dead_temporaries, temporary

SERVING_SIGNATURE = "serving_default"


def _serving_fn(model: nnx.Module):
    """images -> float32 logits, with the model's current weights closed over (become constants)."""
    graph, state = nnx.split(model)

    def serve(images):
        return nnx.merge(graph, state)(images).astype(jnp.float32)

    return serve


def export_model(model: nnx.Module, img_size: int, batch: int | None = None,
                 platforms: tuple[str, ...] | None = None) -> export.Exported:
    """``model`` (eval mode, any dtype) as a ``jax.export.Exported`` taking float32 NHWC images,
    normalised as the model expects, and returning float32 logits. ``platforms`` (e.g.
    ``("cpu", "cuda")``) lowers for several backends at once; default: the current one."""
    shape = (export.symbolic_shape("b")[0] if batch is None else batch, img_size, img_size, 3)
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    return export.export(jax.jit(_serving_fn(model)), platforms=platforms)(spec)


def _write(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` to ``path`` through a temporary name: an interrupted write leaves no partial file
    (and a killed writer's temporary is removed by the next write)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(p)
    tmp = temporary(p)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def save_exported(exported: export.Exported, path: str | os.PathLike) -> Path:
    return _write(path, exported.serialize())


def load_exported(path: str | os.PathLike) -> export.Exported:
    """Read a file written by ``save_exported``; call it with ``.call(images)``."""
    return export.deserialize(bytearray(Path(path).read_bytes()))


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("exporting to TF SavedModel or TFLite needs TensorFlow: "
                          "pip install 'lsnet-jax[tf]'") from e
    return tf


def _tf_module(model: nnx.Module, img_size: int, batch: int | None):
    """A ``tf.Module`` whose ``serve`` is the model converted by jax2tf (native StableHLO)."""
    tf = _tensorflow()
    from jax.experimental import jax2tf

    shape = "(b, {0}, {0}, 3)".format(img_size) if batch is None else None
    fn = jax2tf.convert(_serving_fn(model), polymorphic_shapes=[shape], with_gradient=False)
    module = tf.Module()
    module.serve = tf.function(fn, autograph=False, input_signature=[
        tf.TensorSpec([batch, img_size, img_size, 3], tf.float32, name="images")])
    return tf, module


def save_saved_model(model: nnx.Module, img_size: int, path: str | os.PathLike, batch: int | None = None) -> Path:
    """Write a TF SavedModel with one signature, ``serving_default``: images -> logits."""
    tf, module = _tf_module(model, img_size, batch)
    p = Path(path).absolute()
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(p)
    tmp = temporary(p)
    try:  # written beside it, renamed when complete
        tf.saved_model.save(module, str(tmp), signatures={SERVING_SIGNATURE: module.serve.get_concrete_function()})
        publish(tmp, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p


def save_tflite(model: nnx.Module, img_size: int, path: str | os.PathLike, batch: int | None = None) -> Path:
    """Write a TFLite flatbuffer (builtin ops only, float32). Build ``model`` with
    ``impl="reference"`` (``lsnet-export`` does): XLA:CPU's tuned forms convert to 4,023 ops
    for LSNet-T, the plain lax ones to 2,333, 2.7x faster under XNNPACK. Even so TFLite runs
    LSNet-T several times slower than ONNX Runtime on x86 (docs/performance.md says why)."""
    tf, module = _tf_module(model, img_size, batch)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return _write(path, converter.convert())


def run_saved_model(path: str | os.PathLike, images) -> np.ndarray:
    """Logits of a SavedModel written by ``save_saved_model`` (TensorFlow runtime)."""
    tf = _tensorflow()
    fn = tf.saved_model.load(str(path)).signatures[SERVING_SIGNATURE]
    out = fn(images=tf.constant(np.asarray(images, np.float32)))
    return next(iter(out.values())).numpy()


def run_tflite(path: str | os.PathLike, images) -> np.ndarray:
    """Logits of a TFLite file written by ``save_tflite``, run by the LiteRT interpreter
    (``ai-edge-litert``, TFLite's maintained runtime; TensorFlow's deprecated one if it is absent)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = _tensorflow().lite.Interpreter
    x = np.asarray(images, np.float32)
    interp = Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    if tuple(inp["shape"]) != x.shape:
        interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def save_onnx(model: nnx.Module, img_size: int, path: str | os.PathLike, batch: int | None = None,
              name: str = "lsnet", converter: str = "auto", ska_form: str = "conv") -> Path:
    """``model`` as an ONNX model: input ``images`` float32 NHWC with a symbolic batch ``B``
    unless ``batch`` is given, output float32 ``logits``; the weights are initializers.

    ``converter``: ``"graph"`` writes LSNet classifiers and segmenters directly as the NCHW graph
    ONNX Runtime runs best (``lsnet_jax.inference.onnx_graph``: Conv nodes, folded BatchNorms,
    static reshapes; a model in training form is folded first); ``"jax2onnx"`` converts JAX's
    primitives one by one (any model; build it with ``impl="reference"``, whose plain lax
    operations become ONNX Conv and Einsum nodes); ``"auto"``: the graph where it applies.
    """
    from lsnet_jax.inference import onnx_graph

    if converter not in ("auto", "graph", "jax2onnx"):
        raise ValueError(f"converter={converter!r}; choose auto, graph or jax2onnx")
    if converter == "graph" or (converter == "auto" and onnx_graph.supports(model)):
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ImportError("the ONNX export needs onnx and onnxruntime: pip install 'lsnet-jax[onnx]'") from e
        if not model.deploy:
            from lsnet_jax.models.fold import fold

            model = fold(model)
        proto = onnx_graph.model_proto(model, img_size, batch, name=name, ska_form=ska_form)
        return _write(path, proto.SerializeToString())
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ImportError("the ONNX export needs jax2onnx and onnxruntime: pip install 'lsnet-jax[onnx]'") from e
    # jax2onnx imports its example plugins, some of which need packages it does not require, and
    # logs each failed import with a traceback; none of them is used here
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
    proto = to_onnx(_serving_fn(model), [("B" if batch is None else batch, img_size, img_size, 3)],
                    model_name=name)
    return _write(path, proto.SerializeToString())


def run_onnx(path: str | os.PathLike, images, threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX file written by ``save_onnx``, run by ONNX Runtime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running ONNX needs onnxruntime: pip install 'lsnet-jax[onnx]'") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(images, np.float32)})[0]


QUANT_MODES = ("static", "dynamic")
QUANT_OPS = ("Conv", "MatMul", "Gemm")  # the products: what int8 speeds up; the rest stays float


def calibration_images(folder: str | os.PathLike, img_size: int, mean, std, crop_pct: float = 0.875,
                       limit: int = 256) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` images of ``folder`` (its image files, sorted, not below), as the model sees
    them: the eval resize and centre crop to ``img_size``, normalised; float32 NHWC. Unreadable
    files are skipped and returned by name, with a line on stderr each. Raises ``ValueError`` when
    the folder holds no readable image."""
    import sys

    from lsnet_jax.data.builders import IMAGE_EXTENSIONS
    from lsnet_jax.data.transforms import EvalTransform, read_image_file

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration: {folder} is not a folder of images")
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())[:limit]
    transform = EvalTransform(img_size, crop_pct)
    images, skipped = [], []
    for f in files:
        try:
            images.append(transform(read_image_file(f))["image"])
        except Exception as e:  # a corrupt, truncated or hostile file: skipped and counted
            skipped.append(str(f))
            print(f"calibration: skipped {f} ({type(e).__name__}: {e})", file=sys.stderr)
    if not images:
        raise ValueError(f"calibration: no readable image ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"
                         + (f" ({len(skipped)} unreadable)" if skipped else ""))
    x = np.stack(images).astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32), skipped


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "static",
                  calibration: np.ndarray | None = None, op_types: tuple[str, ...] = QUANT_OPS,
                  per_channel: bool = True) -> Path:
    """An int8 copy of the float ONNX model ``src`` (``save_onnx``'s), by ONNX Runtime's quantizer.

    ``"static"``: weights int8 per output channel, activations uint8 with ranges calibrated on
    ``calibration`` (float32 NHWC, normalised as the model's input: see ``calibration_images``)
    as the 0.001 / 99.999 percentiles, written as QuantizeLinear / DequantizeLinear pairs around
    the convolutions and matrix products, which ORT fuses into its int8 kernels. ``"dynamic"``:
    int8 weights, each activation's range measured at run time (no calibration). Only
    ``op_types`` are quantized: the normalisations, SKA's products and the softmax stay float.
    Static weights use 7 bits (``reduce_range``): x86 CPUs without VNNI multiply uint8 x int8
    pairs into saturating int16 sums (dynamic ones keep 8: with 7 its digits top-1 fell to 73.8%). On the digits classifier (docs/performance.md) the percentile ranges
    and 7-bit weights halve the largest logit error of min/max ranges and 8 bits (0.86 against
    1.70 of the logits' std) and keep its top-1.
    """
    import tempfile

    try:
        from onnxruntime import quantization as q
    except ImportError as e:
        raise ImportError("ONNX quantization needs onnxruntime: pip install 'lsnet-jax[onnx]'") from e
    if mode not in QUANT_MODES:
        raise ValueError(f"quantization mode {mode!r}; choose one of {QUANT_MODES}")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=dst.parent if dst.parent.exists() else None) as d:
        out = Path(d) / "int8.onnx"
        if mode == "dynamic":
            q.quantize_dynamic(src, out, op_types_to_quantize=list(op_types), per_channel=per_channel,
                               weight_type=q.QuantType.QInt8)  # 7 bits here: digits top-1 98.1 -> 73.8%
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError("static quantization needs calibration images (calibration_images(folder, ...))")
            def static(method):
                q.quantize_static(src, out, _Calibration(src, np.asarray(calibration, np.float32)),
                                  quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                                  per_channel=per_channel, reduce_range=True, activation_type=q.QuantType.QUInt8,
                                  weight_type=q.QuantType.QInt8, calibrate_method=method)
            try:
                static(q.CalibrationMethod.Percentile)
            except ValueError as e:  # a tensor of (nearly) one value: no histogram of 2048 bins over it
                logging.getLogger(__name__).warning("percentile calibration failed (%s); calibrating with min / max", e)
                static(q.CalibrationMethod.MinMax)
        return _write(dst, out.read_bytes())


def _Calibration(model: Path, images: np.ndarray):
    """ORT's calibration reader over ``images`` in batches the model's input accepts (a static
    batch: chunks of that size, the last filled from the start)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    inp = onnx.load(str(model), load_external_data=False).graph.input[0]
    dim = inp.type.tensor_type.shape.dim[0]
    size = dim.dim_value if dim.HasField("dim_value") else min(8, len(images))
    chunks = [images[i:i + size] for i in range(0, len(images), size)]
    if len(chunks[-1]) < size:  # filled from the start (cyclically, when there are fewer images than a batch)
        chunks[-1] = np.resize(np.concatenate([chunks[-1], images]), (size, *images.shape[1:]))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(chunks)

        def get_next(self):
            return next(({inp.name: c} for c in self._it), None)

        def rewind(self):
            self._it = iter(chunks)

    return Reader()
