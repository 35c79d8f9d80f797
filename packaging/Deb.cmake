# make deb: CPack DEB, one package per install component (packaging/CMakeLists.txt). The
# packages install under /usr whatever CMAKE_INSTALL_PREFIX the build tree was configured with.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mqpki)
set(CPACK_PACKAGE_VENDOR "mqpki")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${MQPKI_DEB_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "PKI and credential lifecycle manager for MQTT device fleets")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL mqpki mqpki-broker-plugin libmqpki-device libmqpki-device-dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://localhost/mqpki")
# Library dependencies from the binaries (dpkg-shlibdeps). libmqpki-device brings its own
# shlibs file and ldconfig trigger (CPack's would also give the plugin, a module without a
# SONAME, an ldconfig call).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/debian/libmqpki-device/shlibs.in
               ${CMAKE_CURRENT_BINARY_DIR}/debian/shlibs @ONLY)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)

set(CPACK_DEBIAN_MQPKI_PACKAGE_NAME mqpki)
set(CPACK_DEBIAN_MQPKI_PACKAGE_DEPENDS "softhsm2, adduser")
set(CPACK_DEBIAN_MQPKI_PACKAGE_RECOMMENDS "mqpki-broker-plugin")
set(CPACK_DEBIAN_MQPKI_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/mqpki/postinst ${CMAKE_CURRENT_SOURCE_DIR}/debian/mqpki/prerm
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/mqpki/postrm)
set(CPACK_DEBIAN_MQPKI_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_COMPONENT_MQPKI_DESCRIPTION
    "mqpki CA: the mqpki command line and the mqpkid daemon\nA PKI and credential lifecycle manager for MQTT device fleets: a CA in a\nPKCS#11 token, an inventory of assets, EST enrollment, CRLs fed to the\nbrokers.")

set(CPACK_DEBIAN_MQPKI-BROKER-PLUGIN_PACKAGE_NAME mqpki-broker-plugin)
set(CPACK_DEBIAN_MQPKI-BROKER-PLUGIN_PACKAGE_DEPENDS "mqpki (= ${PROJECT_VERSION}), mosquitto (>= 2.0)")
set(CPACK_DEBIAN_MQPKI-BROKER-PLUGIN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/mqpki-broker-plugin/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/mqpki-broker-plugin/postrm)
set(CPACK_COMPONENT_MQPKI-BROKER-PLUGIN_DESCRIPTION
    "mqpki's Mosquitto plugin\nAuthenticates MQTT clients by their mqpki certificate, enforces the CRLs\nmqpkid feeds and the per-asset ACL. Run a broker with\nmqpki-broker@NAME.service.")

set(CPACK_DEBIAN_LIBMQPKI-DEVICE_PACKAGE_NAME libmqpki-device)
set(CPACK_DEBIAN_LIBMQPKI-DEVICE_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_LIBMQPKI-DEVICE_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_LIBMQPKI-DEVICE_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/libmqpki-device/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/libmqpki-device/postrm
    ${CMAKE_CURRENT_SOURCE_DIR}/debian/libmqpki-device/triggers
    ${CMAKE_CURRENT_BINARY_DIR}/debian/shlibs)
set(CPACK_COMPONENT_LIBMQPKI-DEVICE_DESCRIPTION
    "mqpki device library and agent\nlibmqpki-device enrolls a device over EST, keeps its key in a file or a\nPKCS#11 token, renews its certificate and connects to MQTT with it;\nmqpki-device is its agent.")

set(CPACK_DEBIAN_LIBMQPKI-DEVICE-DEV_PACKAGE_NAME libmqpki-device-dev)
set(CPACK_DEBIAN_LIBMQPKI-DEVICE-DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_LIBMQPKI-DEVICE-DEV_PACKAGE_DEPENDS "libmqpki-device (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_LIBMQPKI-DEVICE-DEV_DESCRIPTION
    "mqpki device library: development files\nThe header mqpki_device.h, the link to libmqpki-device.so and mqpki-device.pc.")

include(CPack)
