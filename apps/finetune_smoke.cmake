# ctest script of app.finetune_smoke: runs federated_finetune briefly and checks its outputs.
# Skipped when the corpus is not there: "rolora-skip: <reason>" is the test's SKIP_REGULAR_EXPRESSION
# (cmake_language(EXIT 77) would need CMake 3.29; Debian 12 has 3.25).
if(NOT IS_DIRECTORY "${CORPUS}/spam-assassin/data")
  message("rolora-skip: no SpamAssassin corpus under ${CORPUS} (run scripts/fetch_data.sh)")
  return()
endif()
file(REMOVE_RECURSE "${WORK}")
execute_process(
  COMMAND "${EXE}" --clients 3 --rounds 2 --local-steps 2 --batch 8 --max-len 48 --pretrain-steps 20
          --methods fedit,ffa,rolora,head --data-dir "${CORPUS}" --checkpoint "${WORK}/model.safetensors"
          --out "${WORK}/out"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "federated_finetune failed with ${rc}")
endif()
foreach(f model.safetensors out/fedit.csv out/ffa.csv out/rolora.csv out/head.csv
          out/rolora_adapter/adapter_config.json out/rolora_adapter/adapter_model.safetensors)
  if(NOT EXISTS "${WORK}/${f}")
    message(FATAL_ERROR "federated_finetune did not write ${f}")
  endif()
endforeach()
# Exact aggregation: FFA-LoRA and RoLoRA report (float) rounding error, FedIT does not.
if(NOT out MATCHES "rolora +round +2/2 +phase A .*agg err [0-9.]+e-(0[6-9]|[1-9][0-9])")
  message(FATAL_ERROR "RoLoRA's A round did not report an exact aggregation")
endif()
# --personal-eval: with one client its share is the whole test split, so FedIT's personal
# accuracy (the global model on it) is its test accuracy exactly. FedSA-LoRA with one client
# trains what FedIT trains, but its server model keeps the initial B: its personal accuracy (the
# shared A with the client's own B) must be FedIT's test accuracy, not its own global one.
execute_process(
  COMMAND "${EXE}" --clients 1 --rounds 2 --local-steps 2 --batch 8 --max-len 48 --pretrain-steps 20
          --methods fedit,fedsa --personal-eval --no-save --data-dir "${CORPUS}"
          --checkpoint "${WORK}/model.safetensors" --out "${WORK}/personal"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "federated_finetune --personal-eval failed with ${rc}")
endif()
foreach(m fedit fedsa)
  file(STRINGS "${WORK}/personal/${m}.csv" lines)
  list(GET lines 0 header)
  list(GET lines 2 last)  # round 2: evaluated
  if(NOT header MATCHES ",personal_accuracy$")
    message(FATAL_ERROR "${m}.csv has no personal_accuracy column: ${header}")
  endif()
  string(REPLACE "," ";" cells "${last}")
  list(GET cells 6 accuracy)
  list(GET cells -1 personal)
  if(NOT personal MATCHES "^0?\\.?[0-9]+")
    message(FATAL_ERROR "${m}: no personal accuracy in round 2: ${last}")
  endif()
  if(m STREQUAL "fedit")
    set(fedit_accuracy "${accuracy}")
  endif()
  if(NOT personal STREQUAL fedit_accuracy)
    message(FATAL_ERROR "${m} at one client: personal accuracy ${personal} != FedIT's test accuracy ${fedit_accuracy}")
  endif()
endforeach()
