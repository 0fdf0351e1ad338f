"""The fake blob store's pre-signed URLs behave like S3's: expiring, tamper-proof, GET only."""

from urllib.parse import parse_qs

from cupixfs.fake import signing

PATH = "/store/video-5000/VID_20231117_123456_00_038.insv"
NOW = 1_700_000_000.0


def test_fresh_url_verifies() -> None:
    query = signing.sign(PATH, 3600, NOW)
    assert signing.verify("GET", PATH, query, NOW + 10) is None


def test_query_has_s3_parameters() -> None:
    params = parse_qs(signing.sign(PATH, 60, NOW))
    assert params["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert params["X-Amz-Date"] == ["20231114T221320Z"]
    assert params["X-Amz-Expires"] == ["60"]
    assert len(params["X-Amz-Signature"][0]) == 64


def test_expired_url_is_refused() -> None:
    query = signing.sign(PATH, 60, NOW)
    assert signing.verify("GET", PATH, query, NOW + 59) is None
    assert signing.verify("GET", PATH, query, NOW + 60) == ("AccessDenied", "Request has expired")


def test_zero_ttl_is_expired_at_once() -> None:
    query = signing.sign(PATH, 0, NOW)
    assert signing.verify("GET", PATH, query, NOW).code == "AccessDenied"


def test_head_is_refused_because_the_method_is_signed() -> None:
    query = signing.sign(PATH, 3600, NOW)
    assert signing.verify("HEAD", PATH, query, NOW).code == "SignatureDoesNotMatch"


def test_tampering_breaks_the_signature() -> None:
    query = signing.sign(PATH, 60, NOW)
    assert signing.verify("GET", PATH + "x", query, NOW).code == "SignatureDoesNotMatch"
    longer = query.replace("X-Amz-Expires=60", "X-Amz-Expires=999999")
    assert signing.verify("GET", PATH, longer, NOW).code == "SignatureDoesNotMatch"
    assert signing.verify("GET", PATH, query, NOW, key=b"other").code == "SignatureDoesNotMatch"


def test_missing_or_malformed_parameters() -> None:
    assert signing.verify("GET", PATH, "", NOW).code == "AccessDenied"
    query = signing.sign(PATH, 60, NOW).replace("X-Amz-Date=20231114T221320Z", "X-Amz-Date=bad")
    assert signing.verify("GET", PATH, query, NOW).code == "AuthorizationQueryParametersError"
