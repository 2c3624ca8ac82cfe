"""Clients for TF Serving, a `models.config` writer and the warmup file.

    from keras_ssl.serving import RestClient
    client = RestClient("localhost", 8501, "simclr_fashion_mnist")
    embeddings = client.embed([open("shoe.png", "rb").read()])        # serving_default
    same = client.verify([png_a], [png_b])["same"]                       # Siamese exports

REST (`:predict` on port 8501) needs nothing beyond the standard library; the
gRPC client (port 8500) and the warmup file need `tensorflow-serving-api`
(the `serving` extra). Requests use TF Serving's columnar form
(`{"signature_name": ..., "inputs": {name: values}}`), which carries
signatures with several inputs (`verify`, relative position's `position`);
encoded images travel as `{"b64": ...}`.

The signatures and their tensor names are those `keras_ssl.export` writes:
`serving_default` (`images` -> `embedding`), `embed_pixels` (`pixels` ->
`embedding`), `verify` (`images_a`, `images_b` -> `distance` or `score`,
`same`), `classify` (a model with an online probe: `images` -> the
dataset's class `probabilities`, `class`), `rotation` (RotNet: `images` ->
probabilities of the four rotations, `class`), `position` (relative
position: `centre`, `neighbour` -> probabilities of the 8 neighbours); audio models: `serving_default` (`audio`, WAV
bytes -> `embedding`, `context`) and `embed_waveforms` (`waveforms`).
"""

import base64
import json
import os
import urllib.error
import urllib.request

import numpy as np

from keras_ssl.errors import UserError

REST_PORT = 8501
GRPC_PORT = 8500
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _is_bytes_list(values):
    return isinstance(values, (list, tuple)) and all(isinstance(v, (bytes, bytearray)) for v in values)


def _rest_value(values):
    """A batch for the REST JSON: encoded images as `{"b64": ...}`, arrays as nested lists."""
    if _is_bytes_list(values):
        return [{"b64": base64.b64encode(bytes(v)).decode("ascii")} for v in values]
    return np.asarray(values).tolist()


def rest_request(signature="serving_default", **inputs):
    """The JSON body (a dict) of a `:predict` request: `rest_request("verify", images_a=[..], images_b=[..])`."""
    if not inputs:
        raise UserError("a request needs at least one input, e.g. images=[png_bytes, ...]")
    return {"signature_name": signature, "inputs": {name: _rest_value(v) for name, v in inputs.items()}}


def predict_url(host, port, model, version=None):
    """`http://host:port/v1/models/<model>[/versions/<v>]:predict`."""
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"http://{host}:{port}{path}:predict"


def _decode_outputs(outputs, names):
    """TF Serving answers `{"outputs": {...}}` (or a bare value for one output)."""
    if not isinstance(outputs, dict):
        outputs = {names[0]: outputs}
    return {k: np.asarray(v) for k, v in outputs.items()}


def _encoded_files(files, what):
    """`files` as a list of bytes, or one `UserError` saying what they are instead
    (a single file, a path, or text would otherwise be sent and refused, or
    worse, by the server)."""
    if isinstance(files, (bytes, bytearray, str)):
        got = "a path or text (str)" if isinstance(files, str) else "one bytes object"
        raise UserError(f"{what} takes a list of encoded files (bytes), got {got}; pass [open(path, 'rb').read()]")
    files = list(files)
    for index, item in enumerate(files):
        if not isinstance(item, (bytes, bytearray)):
            hint = ": read the file, open(path, 'rb').read()" if isinstance(item, str) else ""
            raise UserError(f"{what}: item {index} is a {type(item).__name__}, not the file's bytes{hint}")
    return [bytes(item) for item in files]


class _SignatureCalls:
    """The documented signatures as methods, over a subclass's `predict`."""

    def embed(self, images):
        """Encoded images (bytes) -> L2-normalised embeddings `[n, D]`."""
        return self.predict("serving_default", images=_encoded_files(images, "embed"))["embedding"]

    def embed_pixels(self, pixels):
        """uint8 `[n, H, W, C]` -> embeddings."""
        return self.predict("embed_pixels", pixels=np.asarray(pixels, np.uint8))["embedding"]

    def verify(self, images_a, images_b):
        """Two lists of encoded images -> `{"distance" or "score": [n], "same": [n]}`."""
        return self.predict("verify", images_a=_encoded_files(images_a, "verify images_a"),
                            images_b=_encoded_files(images_b, "verify images_b"))

    def classify(self, images):
        """Models with an online probe: encoded images -> the dataset's classes,
        `{"probabilities": [n, K], "class": [n]}`."""
        return self.predict("classify", images=_encoded_files(images, "classify"))

    def position(self, centres, neighbours):
        """Relative position: encoded patch pairs -> `{"probabilities": [n, 8], "class": [n]}`."""
        return self.predict("position", centre=_encoded_files(centres, "position centres"),
                            neighbour=_encoded_files(neighbours, "position neighbours"))

    def rotation(self, images):
        """RotNet: encoded images -> `{"probabilities": [n, 4], "class": [n]}` over 0/90/180/270 degrees."""
        return self.predict("rotation", images=_encoded_files(images, "rotation"))

    def embed_audio(self, wavs):
        """Audio models: WAV files (bytes, 16-bit PCM at 16 kHz) ->
        `{"embedding": [n, D], "context": [n, frames, D]}`."""
        return self.predict("serving_default", audio=_encoded_files(wavs, "embed_audio"))

    def embed_waveforms(self, waveforms):
        """Audio models: float32 `[n, samples]` 16 kHz mono -> `{"embedding", "context"}`."""
        return self.predict("embed_waveforms", waveforms=np.asarray(waveforms, np.float32))


class RestClient(_SignatureCalls):
    """TF Serving's REST API for one model (`version=None`: the latest it serves)."""

    def __init__(self, host="localhost", port=REST_PORT, model="model", version=None, timeout=30.0):
        self.url = predict_url(host, port, model, version)
        self.metadata_url = self.url[:-len(":predict")] + "/metadata"
        self.timeout = timeout

    def _post(self, body):
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise UserError(f"TF Serving refused the request ({e.code}): {detail}")
        except urllib.error.URLError as e:
            raise UserError(f"cannot reach TF Serving at {self.url}: {e.reason}")
        except TimeoutError:
            raise UserError(f"TF Serving at {self.url} did not answer within {self.timeout} s")

    def predict(self, signature="serving_default", **inputs):
        """Outputs of `signature` for `inputs`, as NumPy arrays by output name."""
        reply = self._post(rest_request(signature, **inputs))
        if "error" in reply:
            raise UserError(f"TF Serving: {reply['error']}")
        return _decode_outputs(reply.get("outputs"), ["embedding"])

    def metadata(self):
        """The model's signature metadata (`GET .../metadata`)."""
        try:
            with urllib.request.urlopen(self.metadata_url, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.URLError as e:
            raise UserError(f"cannot reach TF Serving at {self.metadata_url}: {getattr(e, 'reason', e)}")


def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise UserError("gRPC requests and the warmup file need tensorflow-serving-api: "
                        "pip install --no-deps 'tensorflow-serving-api==2.21.*' (see README, Serving)")
    return predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc


def _tensor_proto(values):
    import tensorflow as tf

    if _is_bytes_list(values):
        return tf.make_tensor_proto([bytes(v) for v in values], dtype=tf.string)
    array = np.asarray(values)
    return tf.make_tensor_proto(array)


def grpc_request(model, signature="serving_default", version=None, **inputs):
    """A `tensorflow.serving.PredictRequest` for `signature` with `inputs`."""
    predict_pb2, _, _ = _serving_apis()
    if not inputs:
        raise UserError("a request needs at least one input, e.g. images=[png_bytes, ...]")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(_tensor_proto(values))
    return request


class GrpcClient(_SignatureCalls):
    """TF Serving's gRPC PredictionService for one model."""

    def __init__(self, target=f"localhost:{GRPC_PORT}", model="model", version=None, timeout=30.0):
        import grpc

        _, _, service = _serving_apis()
        self.model, self.version, self.timeout = model, version, timeout
        self.stub = service.PredictionServiceStub(grpc.insecure_channel(target))

    def predict(self, signature="serving_default", **inputs):
        import tensorflow as tf

        reply = self.stub.Predict(grpc_request(self.model, signature, self.version, **inputs), self.timeout)
        return {k: tf.make_ndarray(v) for k, v in reply.outputs.items()}


def models_config(models):
    """TF Serving's `--model_config_file` text for several models.

    `models`: `{name: base_path}` (base_path holds the numeric versions, as
    `saved_models/<name>` does; give the path as the server sees it, e.g.
    `/models/<name>` inside the container).
    """
    if not models:
        raise UserError("models.config needs at least one model")
    entries = []
    for name, base_path in sorted(models.items()):
        if not name or any(c in name for c in '"\\/ '):
            raise UserError(f"model name {name!r} must be a plain word")
        entries.append(f'  config {{\n    name: "{name}"\n    base_path: "{base_path}"\n'
                       f'    model_platform: "tensorflow"\n  }}')
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"


def write_models_config(path, models):
    """Writes `models_config(models)` to `path` (atomically, its folder made if
    missing); returns the path."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(models_config(models))
    os.replace(tmp, path)
    return path


def write_warmup(export_dir, requests):
    """Writes `assets.extra/tf_serving_warmup_requests`: a TFRecord of
    PredictionLogs, one per `(signature, inputs)` in `requests`, which TF
    Serving replays when it loads the model (so the first user request does
    not pay for graph warm-up). Returns the path."""
    import tensorflow as tf

    _, prediction_log_pb2, _ = _serving_apis()
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=grpc_request("warmup", signature, **inputs)))
            writer.write(log.SerializeToString())
    return path


def serving_api_available():
    try:
        _serving_apis()
        return True
    except UserError:
        return False
