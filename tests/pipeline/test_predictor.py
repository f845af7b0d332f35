"""The ONNX Runtime CUDA path on a CPU: I/O binding through fakes of the session and its device buffers."""

import numpy as np
import onnxruntime as ort

from appliance.pipeline.predictor import CudaBatchRunner


class FakeValue:
    """An OrtValue on a (fake) CUDA device."""

    def __init__(self, array, device_type, device_id):
        self.array, self.device = array.copy(), (device_type, device_id)
        self.updates = 0

    def update_inplace(self, array):
        assert array.shape == self.array.shape
        self.array[...] = array
        self.updates += 1


class FakeBinding:
    def __init__(self):
        self.input = self.output = None

    def bind_ortvalue_input(self, name, value):
        self.input = (name, value)

    def bind_output(self, name, device_type, device_id):
        self.output = (name, device_type, device_id)

    def copy_outputs_to_cpu(self):
        return [np.concatenate([-self.input[1].array, self.input[1].array], axis=1)]


class FakeSession:
    def __init__(self):
        self.bindings = []

    def io_binding(self):
        self.bindings.append(FakeBinding())
        return self.bindings[-1]

    def run_with_iobinding(self, binding):
        assert binding.input is not None and binding.output is not None

    def run(self, *args):
        raise AssertionError("the CUDA runner must not use session.run")


def test_the_cuda_runner_binds_a_device_input_buffer_per_shape_and_reuses_it(monkeypatch):
    created = []
    monkeypatch.setattr(
        ort.OrtValue,
        "ortvalue_from_numpy",
        lambda array, device_type, device_id: created.append(FakeValue(array, device_type, device_id)) or created[-1],
    )
    session = FakeSession()
    run = CudaBatchRunner(session, device_id=1)
    batches = [np.full((4, 1, 32, 32), v, np.float64) for v in (1.0, 2.0)] + [np.full((2, 1, 32, 32), 3.0)]
    outputs = [run(batch) for batch in batches]
    assert [value.device for value in created] == [("cuda", 1), ("cuda", 1)]  # a full batch and a shorter one
    assert created[0].updates == 1 and created[0].array.dtype == np.float32
    assert all(binding.output == ("logits", "cuda", 1) for binding in session.bindings)
    assert all(binding.input[0] == "image" for binding in session.bindings)
    for batch, out in zip(batches, outputs, strict=True):
        np.testing.assert_array_equal(out[:, 1:], batch)
