"""keras_ssl.serving and the export's serving contract (issue 7): the REST body and the
gRPC PredictRequest the clients build run through the SavedModel's signatures as TF
Serving would run them; the warmup file replays; models.config parses; saved_model_cli
lists the documented signatures; bad input is refused without crashing the process."""

import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from concurrent import futures

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import serving
from keras_ssl.encoders import small_cnn
from keras_ssl.errors import UserError
from keras_ssl.export import export_saved_model
from keras_ssl.models import Siamese

pytest.importorskip("tensorflow_serving.apis")


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An (untrained) Siamese model with a verify signature, exported; and test images."""
    root = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(0)
    model = Siamese(small_cnn((8, 8, 1), width_multiplier=0.25), embedding_dim=8, normalize=True, threshold=0.7)
    path = export_saved_model(model, str(root / "saved_models"), "siamese", config={"method": "siamese"})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    return model, path, images, [_png(i) for i in images]


def _run_rest_body(loaded, body):
    """What TF Serving does with a columnar REST body: b64 -> bytes, lists -> the
    signature's dtypes, then the named signature."""
    fn = loaded.signatures[body.get("signature_name", "serving_default")]
    specs = fn.structured_input_signature[1]
    inputs = {}
    for name, values in body["inputs"].items():
        if values and isinstance(values[0], dict):
            values = [base64.b64decode(v["b64"]) for v in values]
        inputs[name] = tf.constant(values, dtype=specs[name].dtype)
    return {k: v.numpy() for k, v in fn(**inputs).items()}


def _run_predict_request(loaded, request):
    fn = loaded.signatures[request.model_spec.signature_name]
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    return {k: v.numpy() for k, v in fn(**inputs).items()}


def _direct(model, images_a, images_b=None):
    e_a = model.embed(images_a.astype(np.float32) / 255.0).numpy()
    if images_b is None:
        return e_a
    e_b = model.embed(images_b.astype(np.float32) / 255.0).numpy()
    return np.linalg.norm(e_a - e_b, axis=1)


def test_rest_and_grpc_requests_run_through_the_signatures(exported):
    model, path, images, pngs = exported
    loaded = tf.saved_model.load(path)
    want = _direct(model, images)
    for body in (serving.rest_request(images=pngs), serving.rest_request("embed_pixels", pixels=images)):
        json.dumps(body)  # what goes on the wire is plain JSON
        np.testing.assert_allclose(_run_rest_body(loaded, body)["embedding"], want, atol=1e-5)
    out = _run_rest_body(loaded, serving.rest_request("verify", images_a=pngs, images_b=pngs[::-1]))
    distance = _direct(model, images, images[::-1])
    np.testing.assert_allclose(out["distance"], distance, atol=1e-5)
    assert out["same"].tolist() == (distance < 0.7).tolist()

    request = serving.grpc_request("siamese", "serving_default", version=1, images=pngs)
    assert request.model_spec.name == "siamese" and request.model_spec.version.value == 1
    np.testing.assert_allclose(_run_predict_request(loaded, request)["embedding"], want, atol=1e-5)
    request = serving.grpc_request("siamese", "verify", images_a=pngs, images_b=pngs[::-1])
    np.testing.assert_allclose(_run_predict_request(loaded, request)["distance"], distance, atol=1e-5)
    request = serving.grpc_request("siamese", "embed_pixels", pixels=images)
    assert request.inputs["pixels"].dtype == tf.uint8.as_datatype_enum


def test_warmup_file_replays_every_signature(exported):
    _, path, _, _ = exported
    from tensorflow_serving.apis import prediction_log_pb2

    facts = json.load(open(os.path.join(path, "assets.extra", "preprocessing.json")))
    assert facts["warmup_requests"] == ["serving_default", "embed_pixels", "verify"]
    loaded = tf.saved_model.load(path)
    replayed = []
    for record in tf.data.TFRecordDataset(os.path.join(path, serving.WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        outputs = _run_predict_request(loaded, log.predict_log.request)
        assert all(np.all(np.isfinite(v)) for v in outputs.values() if v.dtype.kind == "f")
        replayed.append(log.predict_log.request.model_spec.signature_name)
    assert replayed == facts["warmup_requests"]


def test_models_config_parses_as_tf_serving_config(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = serving.write_models_config(str(tmp_path / "models.config"),
                                       {"simclr": "/models/simclr", "siamese": "/models/siamese"})
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    models = {m.name: m.base_path for m in config.model_config_list.config}
    assert models == {"simclr": "/models/simclr", "siamese": "/models/siamese"}
    assert all(m.model_platform == "tensorflow" for m in config.model_config_list.config)
    with pytest.raises(UserError, match="plain word"):
        serving.models_config({"bad name": "/x"})


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """A stand-in for TF Serving's REST server: runs the body through the SavedModel."""

    loaded = None

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            outputs = _run_rest_body(self.loaded, body)
            status, reply = 200, {"outputs": {k: v.tolist() for k, v in outputs.items()}}
        except Exception as e:  # TF Serving answers 400 with {"error": ...}
            status, reply = 400, {"error": str(e)[:2000]}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rest_client_round_trip_over_http(exported):
    model, path, images, pngs = exported
    _FakeServing.loaded = tf.saved_model.load(path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = serving.RestClient("127.0.0.1", server.server_address[1], "siamese", version=1)
        assert client.url.endswith("/v1/models/siamese/versions/1:predict")
        np.testing.assert_allclose(client.embed(pngs), _direct(model, images), atol=1e-5)
        np.testing.assert_allclose(client.embed_pixels(images), _direct(model, images), atol=1e-5)
        out = client.verify(pngs, pngs[::-1])
        np.testing.assert_allclose(out["distance"], _direct(model, images, images[::-1]), atol=1e-5)
        with pytest.raises(UserError, match="(?s)TF Serving refused the request \\(400\\).*not PNG/JPEG"):
            client.embed([pngs[0], b"not an image"])
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(UserError, match="cannot reach TF Serving"):
        serving.RestClient("127.0.0.1", server.server_address[1], "siamese", timeout=2).embed(pngs)


def test_grpc_client_round_trip(exported):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model, path, images, pngs = exported
    loaded = tf.saved_model.load(path)

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's name)
            reply = predict_pb2.PredictResponse()
            for k, v in _run_predict_request(loaded, request).items():
                reply.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = serving.GrpcClient(f"127.0.0.1:{port}", "siamese")
        np.testing.assert_allclose(client.embed(pngs), _direct(model, images), atol=1e-5)
        out = client.verify(pngs, pngs[::-1])
        assert out["same"].dtype == bool and out["distance"].shape == (5,)
    finally:
        server.stop(0)


def test_saved_model_cli_lists_the_documented_signatures(exported):
    _, path, _, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for name in ("serving_default", "embed_pixels", "verify"):
        assert f"signature_def['{name}']" in out
    blocks = {b.split("'")[0]: b for b in out.split("signature_def['")[1:]}
    assert "inputs['images'] tensor_info:\n        dtype: DT_STRING" in blocks["serving_default"]
    assert "outputs['embedding'] tensor_info:\n        dtype: DT_FLOAT" in blocks["serving_default"]
    assert "inputs['pixels'] tensor_info:\n        dtype: DT_UINT8" in blocks["embed_pixels"]
    assert "outputs['same'] tensor_info:\n        dtype: DT_BOOL" in blocks["verify"]
    assert "outputs['distance'] tensor_info:\n        dtype: DT_FLOAT" in blocks["verify"]


BAD_INPUT_SCRIPT = '''
import json, sys
import numpy as np, tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
png = open(sys.argv[2], "rb").read()
v = m.signatures["verify"]
cases = {
    "verify_rank2": lambda: v(images_a=tf.constant([[png]]), images_b=tf.constant([[png]])),
    "verify_dtype": lambda: v(images_a=tf.constant([1.0]), images_b=tf.constant([1.0])),
    "verify_garbage": lambda: v(images_a=tf.constant([png, b"garbage"]), images_b=tf.constant([png, png])),
    "verify_counts": lambda: v(images_a=tf.constant([png, png]), images_b=tf.constant([png])),
    "default_rank0": lambda: m.signatures["serving_default"](images=tf.constant(png)),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = None
    except Exception as e:
        out[name] = str(e)[:1500]
empty = v(images_a=tf.constant([], tf.string), images_b=tf.constant([], tf.string))
out["empty"] = {k: list(t.shape) for k, t in empty.items()}
out["alive"] = m.signatures["serving_default"](images=tf.constant([png]))["embedding"].shape.as_list()
print(json.dumps(out))
'''


def test_bad_input_is_refused_without_crashing(exported, tmp_path):
    _, path, _, pngs = exported
    (tmp_path / "one.png").write_bytes(pngs[0])
    proc = subprocess.run([sys.executable, "-c", BAD_INPUT_SCRIPT, path, str(tmp_path / "one.png")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]  # no abort: every error is an exception
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "not compatible with expected shape [?]" in out["verify_rank2"]
    assert out["verify_dtype"] and "string" in out["verify_dtype"]
    assert "these items are not PNG/JPEG/GIF/BMP/WebP images" in out["verify_garbage"]
    assert "verify: images_a and images_b must hold the same number of items" in out["verify_counts"]
    assert out["default_rank0"] and "[?]" in out["default_rank0"]
    assert out["empty"] == {"distance": [0], "same": [0]}
    assert out["alive"] == [1, 8]


def test_requests_need_inputs():
    with pytest.raises(UserError, match="at least one input"):
        serving.rest_request("serving_default")
    with pytest.raises(UserError, match="at least one input"):
        serving.grpc_request("m", "serving_default")


def test_client_calls_refuse_what_is_not_a_list_of_encoded_files():
    """A single file, a path or a list of paths is one clear error before any request is sent."""
    class Recorder(serving._SignatureCalls):
        def predict(self, signature, **inputs):
            self.sent = (signature, inputs)
            return {"embedding": np.zeros((1, 2))}

    client = Recorder()
    for call in (client.embed, client.embed_audio, client.classify, client.rotation):
        with pytest.raises(UserError, match="takes a list of encoded files .*got one bytes object"):
            call(b"RIFF....WAVE")
        with pytest.raises(UserError, match=r"got a path or text \(str\)"):
            call("seven.wav")
        with pytest.raises(UserError, match=r"item 1 is a str, not the file's bytes: read the file"):
            call([b"RIFF", "/data/seven.wav"])
    with pytest.raises(UserError, match="verify images_a: item 0 is a int"):
        client.verify([3], [b"x"])
    client.embed_audio([b"RIFF", bytearray(b"RIFF")])
    assert client.sent == ("serving_default", {"audio": [b"RIFF", b"RIFF"]})
