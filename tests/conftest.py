"""Shared test setup: the repo root and tools/ on sys.path, Caffe's logging quiet, the
fixtures several test files use, and the lanes (markers, registered in pyproject.toml):

    slow   a test taking 1.5 s or more on a 2-core CPU (training runs, subprocesses,
           full-size nets): `make test-fast` leaves these out
    gpu    needs a CUDA build and a GPU (skipped without one)
    build  checks the pycaffe build itself (tools/build_caffe.py and what it installed)

The lanes are given here by test file and name, so editing a test body never touches them;
a new slow test goes into SLOW (or gets @pytest.mark.slow)."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(REPO, 'tools'), REPO):  # tools/: build_caffe.py, bench.py
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault('GLOG_minloglevel', '2')

import models  # noqa: E402  (after the repository is on sys.path)

GPU = {'test_gpu.py'}
BUILD = {'test_build_caffe.py', 'test_caffe_setup.py'}
# Every test of these files is slow; then the slow tests of the other files, by name
# (measured with `pytest --durations=0`).
SLOW_FILES = {'test_train_reliability.py', 'test_demo.py', 'test_cluster.py', 'test_deeplab.py',
              'test_deeplabv3.py'}
SLOW = {
    'test_bench.py': {'test_torch_translation_of_the_deeplab_layers_equals_caffe'},
    'test_cli.py': {'test_sigterm_mid_write_leaves_no_part_files'},
    'test_infer_inputs.py': {'test_layer_without_a_shape_rule_is_probed_at_the_size_used'},
    'test_common.py': {'test_bad_net_never_aborts_caffe', 'test_bad_python_layer_names_the_prototxt',
                       'test_layer_without_a_shape_rule_is_probed'},
    'test_data_scripts.py': {'test_nyud_splits_with_text_or_odd_numbers_is_a_one_line_error'},
    'test_export.py': {'test_command_errors_are_one_line', 'test_command_exports_a_user_model_checked',
                       'test_every_builtin_deploy_file_converts',
                       'test_every_builtin_model_narrow_equals_caffe'},
    'test_infer.py': {'test_bad_inputs_reported_and_others_done',
                      'test_big_photo_segmented_at_the_trained_scale',
                      'test_classes_count_must_match_the_net', 'test_default_out_is_fcn_out_in_cwd',
                      'test_default_weights_missing_names_weights_py', 'test_every_mode_and_size',
                      'test_full_res_is_tiled', 'test_image_too_small_for_the_net', 'test_max_side',
                      'test_missing_weights', 'test_out_folder_is_the_input_folder',
                      'test_output_names_unique_against_inputs_and_outputs',
                      'test_partial_weights_need_allow_partial', 'test_siftflow_semantic_head',
                      'test_unsupported_models', 'test_wrong_shape_weights'},
    'test_layers.py': {'test_labels_beyond_the_nets_classes_stop_training'},
    'test_models.py': {'test_model_paths_from_the_current_directory_and_folders_named_like_built_ins'},
    'test_net.py': {'test_full_deploy_net_output_matches_input_size', 'test_full_fcn8s_and_alexnet_forward',
                    'test_narrow_train_net_runs', 'test_solve_py_is_the_same_for_every_model_but_its_id'},
    'test_newmodel.py': {'test_check_float_or_negative_label_is_a_problem_not_a_traceback',
                         'test_iterations_beyond_caffes_int32_are_refused_before_anything_is_made',
                         'test_new_from_the_cast_vgg16_computed_mean', 'test_new_model_end_to_end',
                         'test_new_refuses_without_making_anything',
                         'test_solve_py_finds_a_moved_repository'},
    'test_parallel.py': {'test_a_rank_other_than_0_writes_and_prints_nothing',
                         'test_gpu_flag_without_a_usable_gpu_is_one_line',
                         'test_ranks_together_draw_the_single_stream'},
    'test_perf_equality.py': {'test_fcn8s_forward_backward_direct_way_matches_numpy',
                              'test_fcn8s_forward_backward_matches_numpy',
                              'test_fcn8s_forward_direct_way_matches_numpy',
                              'test_fcn8s_forward_matches_numpy', 'test_one_thread_gives_the_same_numbers'},
    'test_pspnet_eval.py': {'test_infer_pspnet_release_protocol_palette_and_names'},
    'test_pspnet_net.py': {'test_convert_command_one_line_error'},
    'test_pspnet_train.py': {'test_narrow_pspnet_learns_through_the_solving_loop',
                             'test_solve_py_starts_from_the_converted_release'},
    'test_reproduce.py': {'test_no_data_at_all_prints_the_paper_tables', 'test_numbers_are_score_py_numbers'},
    'test_score.py': {'test_cli_context_label_list_not_utf8_names_it', 'test_cli_errors', 'test_cli_scores_voc',
                      'test_out_checked_before_scoring', 'test_save_pred_into_the_dataset_is_refused'},
    'test_surgery.py': {'test_cast_cli_bad_weights_file', 'test_cast_cli_mismatched_widths_is_one_line',
                        'test_cast_cli_missing_weights', 'test_cast_cli_out_is_not_an_input',
                        'test_cast_cli_with_net_py', 'test_cast_on_a_real_full_tmpfs_is_clean',
                        'test_cast_widths_over_caffes_blob_limit_is_refused_before_caffe'},
    'test_train.py': {'test_every_model_dir_has_a_solve_py_that_answers_help', 'test_nyud_two_stream_solves',
                      'test_resume_continues_exactly_where_it_stopped',
                      'test_short_solve_lowers_loss_and_writes_log_plot_snapshot',
                      'test_sigterm_snapshots_and_exits_cleanly_then_resumes'},
    'test_weights.py': {'test_cli_downloads_into_dir_and_lists', 'test_cli_no_release_and_unknown',
                        'test_cli_server_down_one_line', 'test_mirror_flag_and_setting_tried_first',
                        'test_truncated_download_is_not_kept', 'test_verify_finds_a_truncated_caffemodel',
                        'test_verify_without_a_deploy_net_parses_the_file'},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = os.path.basename(str(item.fspath))
        if name in GPU:
            item.add_marker(pytest.mark.gpu)
        if name in BUILD:
            item.add_marker(pytest.mark.build)
        if name in SLOW_FILES or item.originalname in SLOW.get(name, ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A fresh data root, found by the data layers through FCN_DATA_ROOT."""
    monkeypatch.setenv('FCN_DATA_ROOT', str(tmp_path))
    return tmp_path


@pytest.fixture
def registry():
    """The models and datasets a test registers (a user's model.json, models.get of a new
    folder) are forgotten after it, so other tests see only the built-in ones."""
    saved = dict(models.MODELS), dict(models.DATASETS)
    yield models
    for table, before in zip((models.MODELS, models.DATASETS), saved):
        table.clear()
        table.update(before)
