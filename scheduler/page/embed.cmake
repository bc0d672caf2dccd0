# Writes the live page (IN) as a C array into OUT: sched_page_html[] and its length
# (scheduler/httpd.h). Run by scheduler/CMakeLists.txt at build time.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* generated from scheduler/page/index.html by page/embed.cmake */\n"
  "const unsigned char sched_page_html[] = {\n${body}0x00};\n"
  "const unsigned long sched_page_html_len = ${len};\n")
