"""An export's checksums.json catches any byte changed after the save (recsys/serve/checksums.py),
and its vocabularies record the catalog's id type (one id type for the life of a catalog)."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

import recsys
from recsys import Recommender
from recsys.data.vocab import Vocab
from recsys.serve.export import ExportError
from recsys.serve.service import ApiError, Service

from helpers import serve_frame


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    df, items = serve_frame()
    rec = recsys.fit(df, items=items, model="itemknn", k=5)
    return rec, rec.save_pretrained(str(tmp_path_factory.mktemp("sum") / "export"))


def _copy(path, tmp_path):
    import shutil
    return shutil.copytree(path, str(tmp_path / "copy"))


def test_every_written_file_is_listed_and_a_fresh_export_loads(saved):
    rec, path = saved
    obj = json.load(open(os.path.join(path, "checksums.json")))
    listed = set(obj["files"])
    assert obj["algorithm"] == "sha256"
    assert listed == set(os.listdir(path)) - {"checksums.json"}
    assert Recommender.from_pretrained(path).recommend("u1", k=3)[0].tolist() == rec.recommend("u1", k=3)[0].tolist()


def _flip_a_float_bit(data: bytearray) -> None:
    """The lowest mantissa bit of the first float32 in a safetensors file: a value still finite."""
    import struct
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    header = json.loads(bytes(data[8:8 + n]))
    name = next(k for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] == "F32" and v["shape"][0])
    data[8 + n + header[name]["data_offsets"][0]] ^= 0x01


@pytest.mark.parametrize("name", ["model.safetensors", "extras.safetensors", "items.json", "config.json"])
def test_one_changed_byte_is_refused_naming_the_file(saved, tmp_path, name):
    """A change the structural checks cannot see (a float's lowest bit, a letter of a title,
    a space) is refused with the checksums, naming the file; verify=False loads it as it is."""
    path = _copy(saved[1], tmp_path)
    f = os.path.join(path, name)
    data = bytearray(open(f, "rb").read())
    if name.endswith(".safetensors"):
        _flip_a_float_bit(data)
    elif name == "items.json":
        at = data.index(b"film 1")
        data[at:at + 6] = b"film X"
    else:
        data[1:1] = b" "
    open(f, "wb").write(bytes(data))
    with pytest.raises(ExportError) as e:
        Recommender.from_pretrained(path)
    msg = str(e.value)
    assert "\n" not in msg and f in msg and "SHA-256" in msg, msg
    Recommender.from_pretrained(path, verify=False)


def test_a_hand_edited_file_loads_once_its_checksums_are_dropped(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    f = os.path.join(path, "items.json")
    obj = json.load(open(f))
    obj["titles"][0] = "renamed"
    json.dump(obj, open(f, "w"))
    with pytest.raises(ExportError, match="delete checksums.json to load an edited export"):
        Recommender.from_pretrained(path)
    os.remove(os.path.join(path, "checksums.json"))
    assert Recommender.from_pretrained(path).titles[0] == "renamed"


def test_checksums_json_itself_is_checked(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    f = os.path.join(path, "checksums.json")
    good = json.load(open(f))
    cases = [({"algorithm": "md5", "files": good["files"]}, "must be"),
             ({"algorithm": "sha256", "files": {**good["files"], "../../etc/passwd": "0" * 64}}, "not a file an export writes"),
             ({"algorithm": "sha256", "files": {k: v for k, v in good["files"].items() if k != "users.json"}},
              "users.json is not in checksums.json"),
             ("[not json", "cannot be read as JSON")]
    for obj, match in cases:
        with open(f, "w") as fh:
            fh.write(obj if isinstance(obj, str) else json.dumps(obj))
        with pytest.raises(ExportError, match=match):
            Recommender.from_pretrained(path)
    os.remove(os.path.join(path, "users.json"))
    json.dump(good, open(f, "w"))
    with pytest.raises(ExportError, match="export file missing: .*users.json"):
        Recommender.from_pretrained(path)


def test_a_resave_after_add_items_has_new_checksums(saved, tmp_path):
    rec = Recommender.from_pretrained(saved[1])
    rec.add_items(pd.DataFrame({"item": ["m99"], "title": ["film 99 red"]}))
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "grown")))
    assert "m99" in again.items


def test_the_id_type_travels_with_the_export(tmp_path):
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [10, 11, 10, 12, 11]})
    path = recsys.fit(df, model="popularity").save_pretrained(str(tmp_path / "exp"))
    users = json.load(open(os.path.join(path, "users.json")))
    assert users["id_type"] == "int" and json.load(open(os.path.join(path, "items.json")))["id_type"] == "int"
    users["id_type"] = "str"
    json.dump(users, open(os.path.join(path, "users.json"), "w"))
    with pytest.raises(ExportError, match=r"users.json: id_type='str' must be one of \['int', 'str'\] and match"):
        Recommender.from_pretrained(path, verify=False)


def test_an_empty_vocabulary_keeps_its_id_type():
    v = Vocab([], id_type="int")
    assert v.to_json()["id_type"] == "int" and Vocab.from_json(v.to_json()).id_type == "int"
    assert v.grown([7]).id_type == "int" and Vocab(["a", "b"]).id_type == "str"
    with pytest.raises(ValueError, match="does not match the ids"):
        v.grown(["x"])
    assert Vocab([1, "a"]).id_type is None          # an export made before the id rule


def test_post_items_takes_only_ids_of_the_catalogs_type(tmp_path):
    """POST /items in an integer catalog: "13" is the item 13, "new" a 400 naming the field."""
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3], "item": [10, 11, 10, 12, 11, 12]})
    items = pd.DataFrame({"item": [10, 11, 12], "title": ["red film", "blue film", "red blue"]})
    path = recsys.fit(df, items=items, model="itemknn", k=2).save_pretrained(str(tmp_path / "exp"))
    svc = Service(path, event_log=str(tmp_path / "events.jsonl"))
    with pytest.raises(ApiError) as e:
        svc.add_items([{"item": 13, "title": "green"}, {"item": "new", "title": "green film"}])
    assert e.value.status == 400 and e.value.field == "items[1].item" and "not an integer id" in e.value.message
    assert svc.add_items([{"item": "13", "title": "green film"}])["added"] == 1
    assert 13 in svc.served.rec.items and "13" not in svc.served.rec.items.ids


def test_an_export_saved_to_a_file_object_loads_from_it_and_from_its_path(saved, tmp_path):
    """save_pretrained(file object) writes a zip of the export; from_pretrained reads it from a
    file object or a path, answers as the directory export does, and refuses a hostile zip."""
    import io
    import warnings
    import zipfile
    rec, path = saved
    buf = io.BytesIO()
    assert rec.save_pretrained(buf) is buf
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        assert sorted(z.namelist()) == sorted(os.listdir(path))
    want = rec.recommend(["u1", "u2"], k=3)[0].tolist()
    buf.seek(0)
    assert Recommender.from_pretrained(buf).recommend(["u1", "u2"], k=3)[0].tolist() == want
    (tmp_path / "m.zip").write_bytes(buf.getvalue())
    assert Recommender.from_pretrained(str(tmp_path / "m.zip")).recommend(["u1", "u2"], k=3)[0].tolist() == want
    for members, match in (([("../evil.json", b"{}")], r"member '\.\./evil\.json' is not a file an export writes"),
                           ([("sub/config.json", b"{}")], "not a file an export writes"),
                           ([("users.json", b"{}"), ("users.json", b"[]")], "'users.json' appears more than once")):
        bad = io.BytesIO()
        with zipfile.ZipFile(bad, "w") as z, warnings.catch_warnings():
            warnings.simplefilter("ignore")                         # zipfile warns of the duplicate
            for name, data in members:
                z.writestr(name, data)
        bad.seek(0)
        with pytest.raises(ExportError, match=match):
            Recommender.from_pretrained(bad)
    with pytest.raises(ExportError, match="is not a zip archive of an export"):
        Recommender.from_pretrained(io.BytesIO(b"not a zip"))
    from recsys.serve.archive import extract_archive
    buf.seek(0)
    with pytest.raises(ExportError, match="more than 1,000 bytes once extracted"):
        extract_archive(buf, str(tmp_path), max_bytes=1000)
    buf2 = io.BytesIO()                                        # a flipped byte inside the zip: the checksums
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["items.json"] = members["items.json"].replace(b"film 1", b"film X")
    with zipfile.ZipFile(buf2, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    buf2.seek(0)
    with pytest.raises(ExportError, match="items.json does not match its SHA-256"):
        Recommender.from_pretrained(buf2)
