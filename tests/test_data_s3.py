"""The data layer against a real S3-protocol server (moto_server on loopback, dummy credentials)."""
from __future__ import annotations

import json
import urllib.request

import boto3
import numpy as np
import pytest
from conftest import S3_KEY, S3_SECRET, start_moto_server
from PIL import Image

from sem_dist.data import load_dataset, save_dataset

TINY = ["--arch", "small_cnn", "--steps", "2", "--ku", "2", "--samples", "1", "--ka", "1", "--batch-size", "16",
        "--rho-a", "2/255", "--device", "cpu"]
URI_KEY, URI_SECRET = "AKIAURIKEY", "uri/secret+value"  # offered in a URI, percent-encoded below: refused
URI_CREDS = f"{URI_KEY}:{URI_SECRET.replace('/', '%2F').replace('+', '%2B')}"


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (URI_SECRET, URI_CREDS, URI_KEY, S3_SECRET, "%2F"):
            assert secret not in text


def get_json(client, bucket: str, key: str) -> tuple[dict, str]:
    raw = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return json.loads(raw), raw


def test_convert_protect_export_round_trip_in_s3(tmp_path, cli, s3_env, tiny_digits, monkeypatch, ray_cluster):
    """An S3 output keeps its generator checkpoint in its own staging area, through Ray Train's storage."""
    endpoint, bucket = s3_env
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client = boto3.client("s3", endpoint_url=endpoint)
    train, _ = tiny_digits
    save_dataset(train, str(tmp_path / "local"), shard_rows=16)

    code, out, err = cli("convert", tmp_path / "local", f"s3://{bucket}/data")
    assert code == 0, err
    assert_no_secrets(out, err)
    code, out, err = cli("protect", "--data", f"s3://{bucket}/data", "--out", f"s3://{bucket}/prot",
                         *TINY, "--keep-noise")
    assert code == 0, err
    assert_no_secrets(out, err)
    manifest, raw = get_json(client, bucket, "prot/manifest.json")
    assert_no_secrets(raw)
    assert manifest["source"]["uri"] == f"s3://{bucket}/data" and manifest["count"] == 40
    listed = client.list_objects_v2(Bucket=bucket, Prefix="prot/")["Contents"]
    # Ray Train's pyarrow S3 filesystem leaves an empty "prot/" folder marker (as the S3 console does)
    keys = sorted(o["Key"] for o in listed if not (o["Key"].endswith("/") and o["Size"] == 0))
    assert keys == ["prot/manifest.json", "prot/part-00000.parquet", "prot/part-00001.parquet",
                    "prot/part-00002.parquet"]  # the staging area is gone
    assert not any((tmp_path / "cache").rglob("*.pt"))  # no local checkpoint cache

    got = load_dataset(f"s3://{bucket}/prot")
    assert got.ids == train.ids and np.array_equal(got.clean_images(), train.images)
    assert got.meta["manifest"]["protection"]["method"] == "sem"

    code, _, err = cli("export", f"s3://{bucket}/prot", tmp_path / "png")
    assert code == 0, err
    first = np.asarray(Image.open(tmp_path / "png" / str(train.labels[0]) / f"{train.ids[0]}.png"))
    assert np.array_equal(first, got.images[0, 0])
    code, _, err = cli("export", f"s3://{bucket}/prot", f"s3://{bucket}/png")
    assert code == 0, err
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="png/")["Contents"]]
    assert len([k for k in keys if k.endswith(".png")]) == 40 and "png/export.json" in keys
    assert not any("_staging" in k for k in keys)


def test_s3_endpoint_flag(tmp_path, cli, s3_env, tiny_digits, monkeypatch):
    endpoint, bucket = s3_env
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    save_dataset(tiny_digits[1], str(tmp_path / "local"))
    code, _, err = cli("convert", tmp_path / "local", f"s3://{bucket}/t", "--s3-endpoint", endpoint)
    assert code == 0, err
    code, _, err = cli("export", f"s3://{bucket}/t", tmp_path / "png", "--s3-endpoint", endpoint)
    assert code == 0, err
    assert json.loads((tmp_path / "png" / "export.json").read_text())["count"] == 20


def test_s3_missing_bucket_prefix_and_nesting(tmp_path, cli, s3_env, tiny_digits):
    _, bucket = s3_env
    code, _, err = cli("convert", "s3://no-such-bucket-x/data", tmp_path / "out")
    assert code == 1 and "s3://no-such-bucket-x/data" in error_line(err) and "bucket does not exist" in err
    code, _, err = cli("protect", "--data", f"s3://{bucket}/missing", "--out", tmp_path / "out", *TINY)
    assert code == 1 and f"s3://{bucket}/missing" in error_line(err) and "no such dataset" in err
    save_dataset(tiny_digits[1], str(tmp_path / "local"))
    assert cli("convert", tmp_path / "local", f"s3://{bucket}/d")[0] == 0
    code, _, err = cli("protect", "--data", f"s3://{bucket}/d", "--out", f"s3://{bucket}/d/prot", *TINY)
    assert code == 1 and "inside" in error_line(err)
    code, _, err = cli("convert", tmp_path / "local", f"s3://{bucket}/d")
    assert code == 1 and "already holds a complete dataset" in error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri", [f"s3://{URI_CREDS}@BUCKET/data", f"s3a://{URI_KEY}@BUCKET/data",
                                 f"https://user:{URI_CREDS.split(':')[1]}@example.org/data",
                                 f"s3://{URI_KEY}:{URI_SECRET}@BUCKET/data",  # not percent-encoded
                                 f"imagefolder:s3://{URI_CREDS}@BUCKET/imgs",
                                 f"s3://BUCKET/data?X-Amz-Credential={URI_KEY}&X-Amz-Signature={URI_SECRET}"])
def test_credentials_in_a_uri_are_refused(tmp_path, cli, s3_env, uri):
    """Refused before anything is read or written, in every command and flag, naming the supported ways."""
    _, bucket = s3_env
    uri = uri.replace("BUCKET", bucket)
    for args in (("convert", uri, tmp_path / "out"), ("convert", "digits", uri),
                 ("protect", "--data", f"s3://{bucket}/d", "--out", uri, *TINY),
                 ("protect", "--data", f"s3://{bucket}/d", "--out", tmp_path / "out", "--checkpoint-dir", uri),
                 ("evaluate", "--train", uri, "--test", tmp_path / "t"),
                 ("export", f"s3://{bucket}/d", tmp_path / "png", "--s3-endpoint", uri)):
        code, out, err = cli(*args)
        line = error_line(err)
        assert code == 1 and "credentials in a URI are refused" in line, err
        assert "--s3-profile" in line and "AWS_PROFILE" in line and "IRSA" in line
        assert_no_secrets(out, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "png").exists()
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket)


def test_s3_profile_flag(tmp_path, cli, s3_env, tiny_digits, monkeypatch):
    """With no credentials in the environment, --s3-profile NAME reads them from the shared files
    (only the name is given on the command line); an unknown profile is a one-line error."""
    _, bucket = s3_env
    (tmp_path / "credentials").write_text(f"[sem]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = {S3_SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    save_dataset(tiny_digits[1], str(tmp_path / "local"))
    code, _, err = cli("convert", tmp_path / "local", f"s3://{bucket}/t")
    assert code == 1 and "no usable credentials" in error_line(err) and "--s3-profile" in err
    code, out, err = cli("convert", tmp_path / "local", f"s3://{bucket}/t", "--s3-profile", "sem")
    assert code == 0, err
    assert_no_secrets(out, err)
    code, _, err = cli("export", f"s3://{bucket}/t", tmp_path / "png", "--s3-profile", "nope")
    assert code == 1 and "no usable credentials (ProfileNotFound)" in error_line(err)
    code, _, err = cli("export", f"s3://{bucket}/t", tmp_path / "png", "--s3-profile", "sem")
    assert code == 0, err
    assert json.loads((tmp_path / "png" / "export.json").read_text())["count"] == 20

    # Ray Train's checkpoint storage with the profile: only the name travels in what Ray ships to workers
    import pickle

    from sem_dist.data.storage import StorageOptions
    from sem_dist.distributed.storage import run_exists, storage_for

    path, fs = storage_for(f"s3://{bucket}/ckpt", StorageOptions(s3_profile="sem"))
    blob = pickle.dumps(fs)
    assert S3_SECRET.encode() not in blob and S3_KEY.encode() not in blob and b"sem" in blob
    fs = pickle.loads(blob)
    with fs.open_output_stream(f"{path}/generator/state.bin") as fh:
        fh.write(b"checkpoint")
    assert run_exists(path, fs, "generator") and not run_exists(path, fs, "other")
    assert boto3.client("s3", aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET).get_object(
        Bucket=bucket, Key="ckpt/generator/state.bin")["Body"].read() == b"checkpoint"


@pytest.fixture
def denying_server(monkeypatch, tmp_path):
    """A separate moto_server that enforces IAM: a user whose policy denies all of S3, and a bucket
    holding a dataset. Returns (endpoint, bucket, the user's key id, secret)."""
    proc, endpoint = start_moto_server()
    try:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "admin")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "admin")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        boto3.client("s3").create_bucket(Bucket="locked")
        boto3.client("s3").put_object(Bucket="locked", Key="data/manifest.json", Body=b"{}")
        iam = boto3.client("iam")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        iam.put_user_policy(UserName="nobody", PolicyName="deny", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}))
        urllib.request.urlopen(urllib.request.Request(  # from now on moto checks every request against IAM
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}))
        yield endpoint, "locked", key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_s3_access_denied(tmp_path, cli, denying_server, monkeypatch):
    _, bucket, key_id, secret = denying_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    code, out, err = cli("export", f"s3://{bucket}/data", tmp_path / "png")
    assert code == 1 and f"s3://{bucket}/data" in error_line(err) and "access denied" in err
    assert secret not in out + err and key_id not in out + err
    assert not (tmp_path / "png").exists()
