echo job one
echo job two
