"""CloudWatch in the Smithy RPC v2 CBOR protocol, in front of moto.

The Rust SDK (aws-sdk-cloudwatch >= 1.100) speaks only RPC v2 CBOR to CloudWatch; moto serves
CloudWatch in the Query and AWS JSON 1.0 protocols only (getmoto/moto#9195: no CBOR planned). This
WSGI middleware takes CBOR calls (`POST /service/GraniteServiceVersion20100801/operation/<Op>`),
hands them to moto as the same call in AWS JSON 1.0, and answers in CBOR, using botocore's model
of CloudWatch and its CBOR codec so that timestamps and numbers keep their types. Every other
request passes through untouched.
"""

import datetime
import io
import json

import botocore.session
from botocore.parsers import JSONParser, RpcV2CBORParser
from botocore.serialize import RpcV2CBORSerializer

TARGET_PREFIX = "GraniteServiceVersion20100801"
PATH_PREFIX = f"/service/{TARGET_PREFIX}/operation/"


class CloudWatchCborBridge:
    def __init__(self, app):
        self._app = app
        self._model = botocore.session.get_session().get_service_model("cloudwatch")
        self._decoder = RpcV2CBORParser()
        self._encoder = RpcV2CBORSerializer()
        self._json = JSONParser()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith(PATH_PREFIX):
            return self._app(environ, start_response)
        operation = self._model.operation_model(path[len(PATH_PREFIX):])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        params = self._decode(body) if body else {}
        json_body = json.dumps(params, default=_epoch_seconds).encode()

        inner = dict(environ)
        inner.pop("HTTP_SMITHY_PROTOCOL", None)
        inner.update(
            {
                "PATH_INFO": "/",
                "CONTENT_TYPE": "application/x-amz-json-1.0",
                "CONTENT_LENGTH": str(len(json_body)),
                "HTTP_X_AMZ_TARGET": f"{TARGET_PREFIX}.{operation.name}",
                "wsgi.input": io.BytesIO(json_body),
            }
        )
        answer = {}

        def capture(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda _data: None

        chunks = self._app(inner, capture)
        try:
            raw = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()

        status = answer["status"]
        code = int(status.split(" ", 1)[0])
        if code < 300:
            out = self._encode_output(raw, operation.output_shape, code, answer["headers"])
        else:
            out = self._encode_error(raw)
        # Keep what the SDK reads from headers (request id, the query-compatible error code).
        headers = [
            (k, v)
            for k, v in answer["headers"]
            if k.lower() in ("x-amzn-requestid", "x-amzn-query-error", "date")
        ]
        headers += [
            ("Content-Type", "application/cbor"),
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Length", str(len(out))),
        ]
        start_response(status, headers)
        return [out]

    def _decode(self, body):
        return self._decoder.parse_data_item(self._decoder.get_peekable_stream_from_bytes(body))

    def _encode_output(self, raw, shape, status, headers):
        if shape is None:
            return b""
        parsed = self._json.parse(
            {"body": raw or b"{}", "headers": dict(headers), "status_code": status}, shape
        )
        parsed.pop("ResponseMetadata", None)
        out = bytearray()
        self._encoder._serialize_data_item(out, parsed, shape)
        return bytes(out)

    def _encode_error(self, raw):
        try:
            error = json.loads(raw or b"{}")
        except ValueError:
            error = {"message": raw.decode(errors="replace")}
        fields = {k: str(v) for k, v in error.items() if k in ("__type", "message", "Message")}
        out = bytearray(self._encoder._get_initial_byte(self._encoder.MAP_MAJOR_TYPE, len(fields)))
        for key, value in fields.items():
            self._encoder._serialize_type_string(out, key, None, None)
            self._encoder._serialize_type_string(out, value, None, None)
        return bytes(out)


def _epoch_seconds(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")
