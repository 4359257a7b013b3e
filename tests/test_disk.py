"""How a failed write is recognised and worded, whatever library raised it."""

import errno
import os

from tierlab.disk import free_space, is_storage_error, os_error_in, write_failed


def test_the_os_error_is_found_behind_torch_and_safetensors_wrappers():
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    except RuntimeError as wrapped:  # torch.save into a file object
        assert os_error_in(wrapped).errno == errno.ENOSPC and is_storage_error(wrapped)
    rust = Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                     "\"No space left on device\" }) (os error 28)")
    assert os_error_in(rust).errno == errno.ENOSPC
    assert os_error_in(RuntimeError("shape mismatch")) is None
    assert not is_storage_error(PermissionError(errno.EACCES, "Permission denied"))


def test_the_message_names_the_file_the_problem_and_the_free_space(tmp_path):
    err = write_failed(tmp_path / "a" / "b.pt", OSError(errno.ENOSPC, "No space left on device"),
                       "the previous one is intact", "free space.")
    text = str(err)
    assert text.startswith(f"Writing {tmp_path / 'a' / 'b.pt'} failed: the disk is full (")
    assert " free on /" in text and text.endswith("the previous one is intact. Fix: free space.")
    assert err.exit_code == 2
    assert " free on " in free_space(tmp_path / "does" / "not" / "exist")
