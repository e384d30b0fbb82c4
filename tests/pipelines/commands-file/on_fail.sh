echo it failed
