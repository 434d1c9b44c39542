"""Figures say what they draw: left/right colours follow the keypoint spec."""

import numpy as np

from pnfs_pipeline.keypoints import keypoint_spec_from_dict, load_keypoint_spec
from pnfs_pipeline.viz.skeleton import (
    CENTRE_COLOUR,
    LEFT_COLOUR,
    RIGHT_COLOUR,
    keypoint_colours,
    plot_prediction_overlays,
)


def _spec(names: list[str], pairs: list[list[str]]):
    return keypoint_spec_from_dict(
        {
            "name": "animal",
            "keypoints": names,
            "flip_pairs": pairs,
            "sigmas": [0.05] * len(names),
            "skeleton": [],
            "parts": {1: {"all": names}},
        }
    )


def test_left_and_right_come_from_the_flip_pairs_whatever_the_naming_style():
    coco, legend = keypoint_colours(load_keypoint_spec("coco"))
    assert coco[:3] == [CENTRE_COLOUR, LEFT_COLOUR, RIGHT_COLOUR] and legend == "blue = left, red = right"
    mpii, _ = keypoint_colours(load_keypoint_spec("mpii"))  # r_ankle first, l_ankle sixth
    assert mpii[0] == RIGHT_COLOUR and mpii[5] == LEFT_COLOUR
    styles = ["L_Eye", "R_Eye", "RShoulder", "LShoulder", "front_right_paw", "front_left_paw", "Tail"]
    colours, legend = keypoint_colours(_spec(styles, [["L_Eye", "R_Eye"], ["RShoulder", "LShoulder"], ["front_right_paw", "front_left_paw"]]))
    assert colours == [LEFT_COLOUR, RIGHT_COLOUR, RIGHT_COLOUR, LEFT_COLOUR, RIGHT_COLOUR, LEFT_COLOUR, CENTRE_COLOUR]
    assert legend == "blue = left, red = right"
    # names that do not say their side: coloured by the pair's order, and the legend says so
    colours, legend = keypoint_colours(_spec(["fin_a", "fin_b", "body"], [["fin_a", "fin_b"]]))
    assert colours == [LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR]
    assert legend == "blue / red = first / second keypoint of each flip pair"
    # one unnamed pair puts every pair in its order, named ones too, as the legend then says
    colours, legend = keypoint_colours(_spec(["r_ankle", "l_ankle", "fin_a", "fin_b"], [["r_ankle", "l_ankle"], ["fin_a", "fin_b"]]))
    assert colours == [LEFT_COLOUR, RIGHT_COLOUR, LEFT_COLOUR, RIGHT_COLOUR]
    assert legend == "blue / red = first / second keypoint of each flip pair"


def test_overlays_without_ground_truth_do_not_promise_it():
    spec = load_keypoint_spec("coco")
    image, people = np.zeros((32, 24, 3), np.uint8), np.zeros((17, 3))
    with_truth = plot_prediction_overlays([image], [people], [people], spec)
    detected = plot_prediction_overlays([image], [people], [None], spec)
    assert with_truth._suptitle.get_text() == "Predictions (solid) and ground truth (dashed); blue = left, red = right"
    assert detected._suptitle.get_text() == "Predictions; blue = left, red = right"
