"""What a network's classes mean: a class map and connected components, or interior/boundary and a watershed."""

import numpy as np
import pytest

from appliance.pipeline.instances import instance_targets
from appliance.pipeline.task import (
    INSTANCES,
    SEMANTIC,
    class_map,
    network_class_names,
    segmentation,
)
from tests.pipeline.test_instances import touching_discs


def logits_of(class_map: np.ndarray, classes: int = 3) -> np.ndarray:
    """Logits of a network sure of ``class_map``."""
    return np.stack([np.where(class_map == k, 10.0, 0.0) for k in range(classes)]).astype(np.float32)


def test_two_touching_discs_are_two_objects_for_an_instances_model_and_one_for_a_semantic_model():
    discs = touching_discs()
    network = logits_of(instance_targets(discs))  # what a perfect instances model predicts

    labels, instances, object_class = segmentation(INSTANCES, network)
    assert labels.dtype == np.uint8 and np.array_equal(labels, (discs > 0).astype(np.uint8))
    assert instances.dtype == np.uint32 and instances.max() == 2
    assert object_class.tolist() == [1, 1]

    semantic = segmentation(SEMANTIC, logits_of(discs > 0, classes=2))
    assert np.array_equal(semantic.labels, labels)
    assert semantic.instances.max() == 1  # the reason for the boundary class


def test_small_objects_leave_the_instances_but_not_the_class_map():
    network = np.zeros((20, 20), dtype=np.uint8)
    network[2:12, 2:12] = 2
    network[4:10, 4:10] = 1
    network[15:17, 15:17] = 1  # 4 px
    result = segmentation(INSTANCES, logits_of(network), min_object_px=5)
    assert result.instances.max() == 1 and result.object_class.tolist() == [1]
    assert result.labels[15, 15] == 1


def test_class_map_and_network_classes_of_each_task():
    network = logits_of(np.array([[0, 1, 2]]))
    assert class_map(INSTANCES, network).tolist() == [[0, 1, 1]]
    assert class_map(SEMANTIC, network).tolist() == [[0, 1, 2]]
    unsure = np.log(np.array([0.4, 0.35, 0.25]))[:, None, None]  # background is the argmax, but less likely than not
    assert class_map(INSTANCES, unsure).tolist() == [[1]]
    assert class_map(SEMANTIC, unsure).tolist() == [[0]]
    assert network_class_names(INSTANCES, ["nucleus"]) == ("interior", "boundary")
    assert network_class_names(SEMANTIC, ["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError, match="task must be one of semantic, instances"):
        class_map("panoptic", network)


def test_training_targets_follow_the_task_not_the_folder(instance_set_dir):
    import dataclasses

    from appliance.data.labelled_set import load_labelled_set
    from appliance.pipeline.task import network_classes, read_training_split

    labelled = load_labelled_set(instance_set_dir)
    stems = labelled.stems[:2]
    _, targets = read_training_split(labelled, stems)
    assert network_classes(labelled) == 2 and {int(t.max()) for t in targets} == {2}
    semantic = dataclasses.replace(labelled, metadata={**labelled.metadata, "task": "semantic"})
    _, targets = read_training_split(semantic, stems)
    assert network_classes(semantic) == 1 and {int(t.max()) for t in targets} == {1}
