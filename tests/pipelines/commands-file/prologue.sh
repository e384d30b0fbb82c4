echo prologue one

echo prologue two
