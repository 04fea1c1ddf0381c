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
    """Write a TFLite flatbuffer (builtin ops only, float32)."""
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
