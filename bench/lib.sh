# bench/lib.sh — what the bench scripts that drive the PyTorch peers share (source it).
# The ViT keys of a config, and the MAE decoder's, as the peers' flags name them.
VIT_KEYS=(img_size in_chans patch_size embed_dim depth num_heads)
MAE_KEYS=("${VIT_KEYS[@]}" decoder_embed_dim decoder_depth decoder_num_heads)
# cfg_flags CFG KEY...: " --KEY VALUE" for each KEY, VALUE from the first "KEY = VALUE"
# line of the INI file CFG.
cfg_flags() {
  local cfg=$1 k out=""
  shift
  for k in "$@"; do out+=" --$k $(sed -n "s/^$k *= *//p" "$cfg" | head -1)"; done
  printf '%s' "$out"
}
