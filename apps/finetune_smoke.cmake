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
